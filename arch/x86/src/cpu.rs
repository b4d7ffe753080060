//! What the CPU offers a hypervisor, from CPUID: AMD SVM with nested paging, or Intel VMX
//! (EPT is in a VMX capability MSR, read once VMX is chosen).

use core::fmt;

use raw_cpuid::CpuId;

/// The virtualization extension the hypervisor runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Extension {
    /// AMD SVM; `nested_paging`: NPT (CPUID 0x8000_000A EDX bit 0).
    Svm {
        /// NPT.
        nested_paging: bool,
    },
    /// Intel VMX (CPUID 1 ECX bit 5).
    Vmx,
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Svm {
                nested_paging: true,
            } => f.write_str("AMD SVM with nested paging"),
            Self::Svm {
                nested_paging: false,
            } => f.write_str("AMD SVM without nested paging"),
            Self::Vmx => f.write_str("Intel VMX"),
        }
    }
}

/// The CPU's vendor string and virtualization extension, if it has one.
pub fn probe() -> (heapless::String<12>, Option<Extension>) {
    let cpuid = CpuId::new();
    let mut vendor = heapless::String::new();
    if let Some(v) = cpuid.get_vendor_info() {
        let _ = vendor.push_str(v.as_str());
    }
    let svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_svm());
    let extension = if svm {
        let nested_paging = cpuid.get_svm_info().is_some_and(|s| s.has_nested_paging());
        Some(Extension::Svm { nested_paging })
    } else if cpuid.get_feature_info().is_some_and(|f| f.has_vmx()) {
        Some(Extension::Vmx)
    } else {
        None
    };
    (vendor, extension)
}
