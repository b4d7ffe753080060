//! PSCI 1.1 for cells, and the SMCCC policy for every other firmware call.
//!
//! Function IDs and return codes: Arm DEN 0022 (PSCI 1.1) §5, "Function prototypes" and
//! Table 6 "Return error codes"; the function ID layout (fast call bit 31, SMC64 bit 30,
//! owning entity bits \[29:24\], function number \[15:0\]): Arm DEN 0028 (SMCCC) §2.5.
//!
//! A cell's vCPUs are powered on and off only through the hypervisor: each has a
//! [`cellvisor_core::VcpuPower`] that CPU_ON, CPU_OFF and AFFINITY_INFO act on, lock free,
//! from any CPU.

use cellvisor_core::CpuOnError;

/// PSCI function IDs (the SMC32 form; the SMC64 form sets bit 30).
pub mod function {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND.
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON.
    pub const CPU_ON: u32 = 0x8400_0003;
    /// AFFINITY_INFO.
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    /// MIGRATE.
    pub const MIGRATE: u32 = 0x8400_0005;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// MIGRATE_INFO_UP_CPU.
    pub const MIGRATE_INFO_UP_CPU: u32 = 0x8400_0007;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const FEATURES: u32 = 0x8400_000a;
    /// SMCCC_VERSION (Arm architecture service).
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// SMC64 flag.
    pub const SMC64: u32 = 1 << 30;
}

/// PSCI return codes.
pub mod status {
    /// SUCCESS.
    pub const SUCCESS: i64 = 0;
    /// NOT_SUPPORTED (also the SMCCC "unknown function" value).
    pub const NOT_SUPPORTED: i64 = -1;
    /// INVALID_PARAMETERS.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// DENIED.
    pub const DENIED: i64 = -3;
    /// ALREADY_ON.
    pub const ALREADY_ON: i64 = -4;
    /// ON_PENDING.
    pub const ON_PENDING: i64 = -5;
    /// INVALID_ADDRESS.
    pub const INVALID_ADDRESS: i64 = -9;
}

/// The PSCI version cells are told: 1.1 (major in bits \[31:16\]).
pub const VERSION_1_1: u64 = 1 << 16 | 1;

/// `MIGRATE_INFO_TYPE` = 2: no Trusted OS needs migration (DEN 0022 §5.7).
pub const MIGRATE_NOT_REQUIRED: u64 = 2;

/// The PSCI functions a cell gets, with their SMCCC forms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Psci {
    /// PSCI_VERSION.
    Version,
    /// CPU_OFF.
    CpuOff,
    /// CPU_ON (SMC32 or SMC64).
    CpuOn,
    /// AFFINITY_INFO.
    AffinityInfo,
    /// MIGRATE_INFO_TYPE.
    MigrateInfoType,
    /// SYSTEM_OFF.
    SystemOff,
    /// SYSTEM_RESET.
    SystemReset,
    /// PSCI_FEATURES.
    Features,
    /// Any other PSCI function (CPU_SUSPEND, MIGRATE, SYSTEM_SUSPEND, ...): NOT_SUPPORTED.
    Unsupported,
}

/// What a firmware call (SMC or HVC) from a cell is, by its function ID.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Call {
    /// Standard secure service, PSCI range (function numbers 0x00..0x20): emulated.
    Psci(Psci),
    /// Arm architecture service (owner 0): SMCCC_VERSION, ARCH_FEATURES, workarounds.
    Architecture(u32),
    /// Standard or vendor hypervisor service (owners 5 and 6): the hypervisor's own calls.
    Hypervisor(u32),
    /// Silicon-provider, OEM, Trusted Application or Trusted OS calls (owners 2, 3,
    /// 48..64): the firmware's business; only the root cell may reach the firmware.
    Firmware(u32),
    /// Everything else (other standard secure services, reserved owners, yielding calls).
    Unknown(u32),
}

impl Call {
    /// Classifies a function ID (the low 32 bits of x0).
    pub const fn classify(id: u32) -> Self {
        let fast = id & 1 << 31 != 0;
        let owner = (id >> 24) & 0x3f;
        let number = id & 0xffff;
        // Bits [23:16] must be zero for fast calls (SMCCC §2.5).
        if !fast || (id >> 16) & 0xff != 0 {
            return Self::Unknown(id);
        }
        match owner {
            0 => Self::Architecture(id),
            4 if number < 0x20 => Self::Psci(Self::psci(id & !function::SMC64)),
            2 | 3 | 48..=63 => Self::Firmware(id),
            5 | 6 => Self::Hypervisor(id),
            _ => Self::Unknown(id),
        }
    }

    const fn psci(id32: u32) -> Psci {
        match id32 {
            function::VERSION => Psci::Version,
            function::CPU_OFF => Psci::CpuOff,
            function::CPU_ON => Psci::CpuOn,
            function::AFFINITY_INFO => Psci::AffinityInfo,
            function::MIGRATE_INFO_TYPE => Psci::MigrateInfoType,
            function::SYSTEM_OFF => Psci::SystemOff,
            function::SYSTEM_RESET => Psci::SystemReset,
            function::FEATURES => Psci::Features,
            _ => Psci::Unsupported,
        }
    }
}

/// PSCI_FEATURES for a cell: SUCCESS (0, no feature flags) for the functions it gets,
/// NOT_SUPPORTED for the rest. SMCCC_VERSION is reported as `smccc_version_supported`.
pub fn features(queried: u32, smccc_version_supported: bool) -> i64 {
    match Call::classify(queried) {
        Call::Psci(Psci::Unsupported) | Call::Unknown(_) => status::NOT_SUPPORTED,
        Call::Psci(_) => status::SUCCESS,
        Call::Architecture(function::SMCCC_VERSION) if smccc_version_supported => status::SUCCESS,
        _ => status::NOT_SUPPORTED,
    }
}

/// SMCCC function IDs of the Arm architecture service the policy knows (DEN 0028).
pub mod arch_call {
    /// SMCCC_VERSION.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    /// SMCCC_ARCH_WORKAROUND_1 (branch predictor invalidation, CVE-2017-5715).
    pub const WORKAROUND_1: u32 = 0x8000_8000;
    /// SMCCC_ARCH_WORKAROUND_2 (speculative store bypass, CVE-2018-3639).
    pub const WORKAROUND_2: u32 = 0x8000_7fff;
    /// SMCCC_ARCH_WORKAROUND_3 (branch history, CVE-2022-23960).
    pub const WORKAROUND_3: u32 = 0x8000_3fff;
}

/// What the hypervisor does with an SMCCC call that is not PSCI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// To the firmware with the caller's x1..x17.
    Forward,
    /// To the firmware with x1 = this value and every other argument 0.
    ForwardOnly(u64),
    /// Print the root cell's trap counters (the caller limits the rate).
    Counters,
    /// Answer x0 = this value without the firmware.
    Return(i64),
}

/// The PSCI return code of a refused CPU_ON.
pub const fn cpu_on_status(error: CpuOnError) -> i64 {
    match error {
        CpuOnError::AlreadyOn => status::ALREADY_ON,
        CpuOnError::OnPending => status::ON_PENDING,
        CpuOnError::Lent => status::DENIED,
    }
}

/// The policy for SMCCC calls other than PSCI, by caller. `root`: the caller is the root
/// cell; `firmware`: firmware implementing SMCCC 1.1 is present (else nothing could answer).
///
/// | call | root cell | other cells |
/// |---|---|---|
/// | Arm architecture service (SMCCC_VERSION, ARCH_FEATURES, workarounds) | firmware | SMCCC_VERSION and the workarounds only, without the caller's arguments; ARCH_FEATURES only of a workaround; WORKAROUND_2 always asks for the mitigation on |
/// | SiP, OEM, Trusted Application and Trusted OS services | firmware | NOT_SUPPORTED |
/// | the hypervisor's `0x8600_0000`/`0xC600_0000` (trap counters) | printed, rate limited | NOT_SUPPORTED |
/// | everything else | NOT_SUPPORTED | NOT_SUPPORTED |
///
/// A cell that is not the root cell shares the firmware with every other cell: it gets the
/// calls a stock kernel needs for its CPUs' errata workarounds, which act on the calling CPU
/// only, and nothing that carries its data to the firmware or changes the machine.
pub fn smccc_route(call: Call, root: bool, firmware: bool, x1: u64) -> Route {
    use arch_call::*;
    let workaround = |id: u64| matches!(id, 0x8000_8000 | 0x8000_7fff | 0x8000_3fff);
    match call {
        Call::Hypervisor(id) if root && id & 0xffff == 0 && (id >> 24) & 0x3f == 6 => {
            Route::Counters
        }
        Call::Architecture(_) | Call::Firmware(_) if !firmware => {
            Route::Return(status::NOT_SUPPORTED)
        }
        Call::Architecture(_) | Call::Firmware(_) if root => Route::Forward,
        Call::Architecture(SMCCC_VERSION | WORKAROUND_1 | WORKAROUND_3) => Route::ForwardOnly(0),
        Call::Architecture(ARCH_FEATURES) if workaround(x1) => Route::ForwardOnly(x1),
        Call::Architecture(WORKAROUND_2) => Route::ForwardOnly(1),
        _ => Route::Return(status::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smccc_calls_other_than_psci_have_a_policy_per_caller() {
        use arch_call::*;
        let route = |id: u32, root: bool, x1: u64| smccc_route(Call::classify(id), root, true, x1);
        let unsupported = Route::Return(status::NOT_SUPPORTED);
        // The trap counters: the root cell only.
        for id in [0x8600_0000, 0xc600_0000] {
            assert_eq!(route(id, true, 0), Route::Counters);
            assert_eq!(route(id, false, 0), unsupported);
        }
        assert_eq!(route(0xc600_0001, true, 0), unsupported);
        // Firmware services: the root cell only, with its arguments.
        for id in [0xc200_0000, 0x8300_0001, 0xf200_0000, 0xb000_0000] {
            assert_eq!(route(id, true, 7), Route::Forward, "{id:#x}");
            assert_eq!(route(id, false, 7), unsupported, "{id:#x}");
        }
        assert_eq!(route(SMCCC_VERSION, true, 5), Route::Forward);
        // Other cells: what a stock kernel needs for its errata, without their arguments.
        assert_eq!(route(SMCCC_VERSION, false, 5), Route::ForwardOnly(0));
        assert_eq!(route(WORKAROUND_1, false, 5), Route::ForwardOnly(0));
        assert_eq!(route(WORKAROUND_3, false, 5), Route::ForwardOnly(0));
        assert_eq!(
            route(WORKAROUND_2, false, 0),
            Route::ForwardOnly(1),
            "mitigation stays on"
        );
        for id in [WORKAROUND_1, WORKAROUND_2, WORKAROUND_3] {
            assert_eq!(
                route(ARCH_FEATURES, false, u64::from(id)),
                Route::ForwardOnly(u64::from(id))
            );
        }
        assert_eq!(route(ARCH_FEATURES, false, 0xc200_0000), unsupported);
        assert_eq!(
            route(ARCH_FEATURES, false, 1 << 32 | 0x8000_8000),
            unsupported
        );
        assert_eq!(route(0x8000_ff00, false, 0), unsupported);
        // No firmware: nothing is forwarded.
        assert_eq!(
            smccc_route(Call::classify(WORKAROUND_1), true, false, 0),
            unsupported
        );
        // Yielding calls and unknown owners.
        assert_eq!(route(0x0400_0000, true, 0), unsupported);
        assert_eq!(route(0x8700_0000, true, 0), unsupported);
    }

    #[test]
    fn classifies_function_ids() {
        assert_eq!(Call::classify(0x8400_0000), Call::Psci(Psci::Version));
        assert_eq!(Call::classify(0xc400_0003), Call::Psci(Psci::CpuOn));
        assert_eq!(Call::classify(0x8400_0003), Call::Psci(Psci::CpuOn));
        assert_eq!(Call::classify(0xc400_0004), Call::Psci(Psci::AffinityInfo));
        assert_eq!(Call::classify(0x8400_0002), Call::Psci(Psci::CpuOff));
        assert_eq!(Call::classify(0x8400_0008), Call::Psci(Psci::SystemOff));
        assert_eq!(Call::classify(0x8400_0009), Call::Psci(Psci::SystemReset));
        assert_eq!(
            Call::classify(0x8400_0006),
            Call::Psci(Psci::MigrateInfoType)
        );
        assert_eq!(Call::classify(0x8400_000a), Call::Psci(Psci::Features));
        assert_eq!(Call::classify(0xc400_0001), Call::Psci(Psci::Unsupported));
        assert_eq!(Call::classify(0xc400_0012), Call::Psci(Psci::Unsupported));
        // Other standard secure services (e.g. TRNG at 0x84000050) are not PSCI.
        assert_eq!(Call::classify(0x8400_0050), Call::Unknown(0x8400_0050));
        assert_eq!(Call::classify(0x8000_0000), Call::Architecture(0x8000_0000));
        assert_eq!(Call::classify(0x8000_8000), Call::Architecture(0x8000_8000));
        // ZynqMP PM API (SiP) and Trusted OS calls.
        assert_eq!(Call::classify(0xc200_0001), Call::Firmware(0xc200_0001));
        assert_eq!(Call::classify(0xbf00_ff01), Call::Firmware(0xbf00_ff01));
        assert_eq!(Call::classify(0xc600_0000), Call::Hypervisor(0xc600_0000));
        // Yielding calls and non-zero bits [23:16].
        assert_eq!(Call::classify(0x0400_0000), Call::Unknown(0x0400_0000));
        assert_eq!(Call::classify(0x8401_0000), Call::Unknown(0x8401_0000));
    }

    #[test]
    fn features_match_what_is_emulated() {
        for id in [
            0x8400_0000,
            0xc400_0003,
            0x8400_0002,
            0xc400_0004,
            0x8400_0008,
        ] {
            assert_eq!(features(id, false), status::SUCCESS, "{id:#x}");
        }
        assert_eq!(features(0xc400_0001, true), status::NOT_SUPPORTED);
        assert_eq!(features(0xc200_0001, true), status::NOT_SUPPORTED);
        assert_eq!(
            features(function::SMCCC_VERSION, false),
            status::NOT_SUPPORTED
        );
        assert_eq!(features(function::SMCCC_VERSION, true), status::SUCCESS);
    }
}
