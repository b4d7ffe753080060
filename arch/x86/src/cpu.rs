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
    /// Intel VMX (CPUID 1 ECX bit 5); `ept`: the EPT execution control can be set.
    Vmx {
        /// EPT.
        ept: bool,
    },
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
            Self::Vmx { ept: true } => f.write_str("Intel VMX with EPT"),
            Self::Vmx { ept: false } => f.write_str("Intel VMX without EPT"),
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
        Some(Extension::Vmx { ept: vmx_ept() })
    } else {
        None
    };
    (vendor, extension)
}

/// Whether VMX can enable EPT: the allowed-1 settings (high half) of IA32_VMX_PROCBASED_CTLS
/// (MSR 0x482) have "activate secondary controls" (bit 31), and those of
/// IA32_VMX_PROCBASED_CTLS2 (MSR 0x48b) "enable EPT" (bit 1) (Intel SDM Vol. 3D, A.3.2 and
/// A.3.3). Only for a CPU with VMX (these MSRs exist then).
fn vmx_ept() -> bool {
    use x86_64::registers::model_specific::Msr;
    // SAFETY: CPUID says VMX, so the capability MSR exists; reading it has no effect.
    let primary = unsafe { Msr::new(0x482).read() };
    if primary >> 32 & 1 << 31 == 0 {
        return false;
    }
    // SAFETY: IA32_VMX_PROCBASED_CTLS2 exists when secondary controls can be activated.
    let secondary = unsafe { Msr::new(0x48b).read() };
    secondary >> 32 & 1 << 1 != 0
}
