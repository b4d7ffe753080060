//! `hostile-demo`: one attack on the hypervisor's partition per run, for the hostile-cell
//! suite (`xtask/src/scripts/hostile.sh`). The root cell writes the case number into the
//! cell's root-shared page (guest-physical 0x9000_0000, see
//! `platforms/qemu-arm64/config/demo.toml`) after loading the image and before starting
//! the cell; the inmate runs that case and reports in the same page (32-bit words):
//!
//! | offset | word |
//! |---:|---|
//! | 0x00 | case number (written by the root cell) |
//! | 0x04 | [`Status`] |
//! | 0x08 | first value read back (case specific) |
//! | 0x0c | second value read back |
//! | 0x10 | ESR_EL1 of an exception the case caught (0: none) |
//! | 0x14 | heartbeat: counts while the cell runs on after a refused access |
//!
//! Three kinds of cases: an access the hypervisor must stop the cell for (the inmate
//! reports [`Status::WentThrough`] if it survives it), an access it must refuse harmlessly
//! (the inmate checks the refusal itself: a register that keeps its value, an error code, an
//! undefined-instruction exception), and storms and lifecycle calls the root cell judges from
//! outside. The same lines go to the cell's UART:
//!
//! ```text
//! hostile-demo: case 10 gicd-isenabler-foreign
//! hostile-demo: case 10 went through: a=0x0 b=0x0 esr=0x0
//! ```

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use core::arch::asm;

    use cellvisor_inmate::fault::{self, Fault};
    use cellvisor_inmate::gic::{Gic, Version, DEFAULT_PRIORITY};
    use cellvisor_inmate::irq::{self, Interrupt};
    use cellvisor_inmate::mmio::{Mmio, MmioRegion};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::timer::{self, VIRTUAL_TIMER_INTID};
    use cellvisor_inmate::{console, park, println, sysreg, Platform};

    cellvisor_inmate::entry!(main);

    /// The root-shared page (demo.toml).
    const SHARED: usize = 0x9000_0000;
    /// Offsets in it.
    const CASE: usize = 0x00;
    const STATUS: usize = 0x04;
    const VALUE_A: usize = 0x08;
    const VALUE_B: usize = 0x0c;
    const ESR: usize = 0x10;
    const HEARTBEAT: usize = 0x14;
    /// SYSTEM_RESETs so far: the reset case restarts the cell, which runs the case again
    /// (a reset storm the root cell watches).
    const RESETS: usize = 0x18;

    /// What the case came to, in the shared page's status word.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u32)]
    enum Status {
        /// The attack is under way (a cell that is stopped stays here).
        Attacking = 1,
        /// Refused harmlessly, as the inmate checked.
        Refused = 2,
        /// The access went through, or came back with the wrong value or an exception.
        WentThrough = 3,
        /// The case does not apply to this GIC version.
        NotApplicable = 4,
        /// A storm runs until the cell is destroyed.
        Storming = 5,
    }

    /// What a case function reports.
    enum Outcome {
        /// Refused as the policy says, with the values read back.
        Refused(u32, u32),
        /// Not refused: what came back.
        WentThrough(u32, u32),
        /// An exception the case did not expect.
        Caught(Fault),
        NotApplicable,
    }

    /// Another cell's RAM and the hypervisor, as guest-physical addresses: nothing of this
    /// cell is mapped there (RAM at 0, UART1, the communication region at 0x8000_0000, the
    /// shared page at 0x9000_0000).
    const ROOT_RAM: usize = 0x4100_0000;
    const HYPERVISOR: usize = 0x4020_0000;
    const TICKER_RAM: usize = 0x7e00_0000;
    /// The root cell's console, UART0.
    const UART0: usize = 0x0900_0000;
    /// GICv2 hypervisor interface (GICH) of QEMU `virt`; nothing on a GICv3 machine.
    const GICH: usize = 0x0803_0000;

    /// The cell's own interrupt (UART1, SPI 8 of QEMU `virt`, demo.toml).
    const OWN_SPI: u32 = 40;
    /// An interrupt the cell does not own.
    const FOREIGN_SPI: u32 = 33;

    /// Distributor offsets (GICv2 §4.3, GICv3 §12.9).
    const GICD_CTLR: usize = 0x000;
    const GICD_IGROUPR: usize = 0x080;
    const GICD_ISENABLER: usize = 0x100;
    const GICD_ISPENDR: usize = 0x200;
    const GICD_ISACTIVER: usize = 0x300;
    const GICD_IPRIORITYR: usize = 0x400;
    const GICD_ITARGETSR: usize = 0x800;
    const GICD_ICFGR: usize = 0xc00;
    const GICD_IGRPMODR: usize = 0xd00;
    const GICD_SGIR: usize = 0xf00;
    /// Reserved in both versions (GICv2 0xF30-0xFCC, GICv3 0x0F30-0x0F7C).
    const GICD_RESERVED: usize = 0xf40;
    const GICD_IROUTER: usize = 0x6000;
    /// Redistributor: the SGI/PPI frame and its registers (GICv3 §12.10).
    const GICR_FRAME: usize = 0x2_0000;
    const GICR_SGI_BASE: usize = 0x1_0000;
    const GICR_IGROUPR0: usize = GICR_SGI_BASE + 0x080;
    const GICR_ICENABLER0: usize = GICR_SGI_BASE + 0x180;
    /// The priority the hypervisor clamps a cell's interrupts to at the highest.
    const CLAMPED_PRIORITY: u32 = 0x10;

    /// PSCI function IDs (Arm DEN 0022, §5.1) and status codes.
    const PSCI_VERSION: u64 = 0x8400_0000;
    const PSCI_CPU_OFF: u64 = 0x8400_0002;
    const PSCI_CPU_ON: u64 = 0xc400_0003;
    const PSCI_AFFINITY_INFO: u64 = 0xc400_0004;
    const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
    const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
    const INVALID_PARAMETERS: i64 = -2;
    /// SMCCC (Arm DEN 0028) NOT_SUPPORTED.
    const NOT_SUPPORTED: i64 = -1;

    /// ESR_EL1.EC of an undefined instruction ("unknown reason").
    const EC_UNKNOWN: u8 = 0x00;

    /// One attack: its name and what runs it.
    type Attack = (&'static str, fn(&Env) -> Outcome);

    /// The cases, numbered from 1 in this order (hostile.sh has the same list).
    const CASES: &[Attack] = &[
        ("mem-root-ram-write", |_| {
            stop(|| write32(ROOT_RAM, 0xdead_beef))
        }),
        ("mem-root-ram-read", |_| {
            stop(|| {
                read32(ROOT_RAM);
            })
        }),
        ("mem-hypervisor-write", |_| stop(|| write32(HYPERVISOR, 0))),
        ("mem-ticker-ram-read", |_| {
            stop(|| {
                read32(TICKER_RAM);
            })
        }),
        ("uart0-write", |_| stop(|| write32(UART0, u32::from(b'!')))),
        ("gich-write", |_| stop(|| write32(GICH, 0))),
        ("jump-outside", jump_outside),
        ("gicd-ldp", |env| stop(|| ldp(env.gicd + GICD_ISENABLER))),
        ("dc-zva-outside", dc_zva_outside),
        ("gicd-isenabler-foreign", |env| {
            stop(|| env.set_bit(GICD_ISENABLER, FOREIGN_SPI))
        }),
        ("gicd-ispendr-foreign", |env| {
            stop(|| env.set_bit(GICD_ISPENDR, FOREIGN_SPI))
        }),
        ("gicd-isactiver-foreign", |env| {
            stop(|| env.set_bit(GICD_ISACTIVER, FOREIGN_SPI))
        }),
        ("gicd-icfgr-foreign", |env| {
            // Two bits per INTID; bit 1 of the field: edge-triggered.
            let offset = GICD_ICFGR + (FOREIGN_SPI as usize / 16) * 4;
            let bit = 2 * (FOREIGN_SPI % 16) + 1;
            stop(|| write32(env.gicd + offset, 1 << bit))
        }),
        ("gicd-itargetsr-foreign", |env| {
            if env.version != Version::V2 {
                return Outcome::NotApplicable;
            }
            // CPU interface 0: the root cell's first CPU.
            stop(|| write8(env.gicd + GICD_ITARGETSR + OWN_SPI as usize, 1))
        }),
        ("gicd-irouter-foreign", |env| {
            if env.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            // Affinity 0.0.0.0: the root cell's first CPU.
            stop(|| write64(env.gicd + GICD_IROUTER + 8 * OWN_SPI as usize, 0))
        }),
        ("gicd-reserved-offset", |env| {
            stop(|| write32(env.gicd + GICD_RESERVED, 0xffff_ffff))
        }),
        ("gicd-halfword", |env| {
            stop(|| {
                read16(env.gicd + GICD_IPRIORITYR + OWN_SPI as usize);
            })
        }),
        ("gicd-sgir-foreign", |env| {
            if env.version != Version::V2 {
                return Outcome::NotApplicable;
            }
            // Target list: CPU interface 0; SGI 1.
            stop(|| write32(env.gicd + GICD_SGIR, 1 << 16 | 1))
        }),
        ("gicr-foreign-frame", |env| {
            if env.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            // The neighbouring CPU's redistributor (the ticker's, CPU 2): disable its timer.
            let foreign = env.foreign_redistributor();
            stop(|| write32(foreign + GICR_ICENABLER0, 1 << VIRTUAL_TIMER_INTID))
        }),
        ("gicr-reserved-ppi25", |env| env.disable_own_private(25)),
        ("gicr-reserved-ppi26", |env| env.disable_own_private(26)),
        ("gicr-reserved-sgi15", |env| env.disable_own_private(15)),
        ("icc-sgi1r-foreign", |env| {
            if env.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            // INTID 1 to Aff3.Aff2.Aff1 = 0.0.0, target list CPU 0.
            stop(|| write_icc_sgi1r(1 << 24 | 1))
        }),
        ("gicd-igroupr-own", |env| {
            let offset = GICD_IGROUPR + (OWN_SPI as usize / 32) * 4;
            let bit = 1 << (OWN_SPI % 32);
            env.unchanged_after(
                offset,
                |before| before & !bit,
                bit,
                env.version == Version::V3,
            )
        }),
        ("gicr-igroupr0-ppi27", |env| {
            let bit = 1 << VIRTUAL_TIMER_INTID;
            let (base, offset) = match env.version {
                Version::V3 => (env.gicr, GICR_IGROUPR0),
                Version::V2 => (env.gicd, GICD_IGROUPR),
            };
            let before = read32(base + offset);
            let outcome = checked(|| write32(base + offset, before & !bit));
            let after = read32(base + offset);
            match outcome {
                Some(fault) => Outcome::Caught(fault),
                None if after & bit == before & bit => Outcome::Refused(before, after),
                None => Outcome::WentThrough(before, after),
            }
        }),
        ("gicd-igrpmodr", |env| {
            if env.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            let offset = GICD_IGRPMODR + (OWN_SPI as usize / 32) * 4;
            let bit = 1 << (OWN_SPI % 32);
            env.unchanged_after(offset, |before| before | bit, bit, false)
        }),
        ("ipriorityr-clamp", |env| {
            let address = env.gicd + GICD_IPRIORITYR + OWN_SPI as usize;
            if let Some(fault) = checked(|| write8(address, 0)) {
                return Outcome::Caught(fault);
            }
            let priority = u32::from(read8(address));
            if priority == CLAMPED_PRIORITY {
                Outcome::Refused(0, priority)
            } else {
                Outcome::WentThrough(0, priority)
            }
        }),
        ("gicd-ctlr-zero", |env| {
            env.unchanged_after(GICD_CTLR, |_| 0, u32::MAX, false)
        }),
        ("psci-cpu-on-foreign", |_| {
            // The root cell's first CPU (MPIDR affinity 0), entry at this cell's 0.
            let status = hvc(PSCI_CPU_ON, 0, 0, 0);
            expect(status < 0, status, 0)
        }),
        ("psci-affinity-info-foreign", |_| {
            let status = hvc(PSCI_AFFINITY_INFO, 0, 0, 0);
            expect(status == INVALID_PARAMETERS, status, 0)
        }),
        ("smccc-counter-dump", |_| {
            // The hypervisor's own service (owner 6, function 0): a console flood if a
            // cell may call it. The first answer that is not NOT_SUPPORTED ends the case.
            for round in 0..3000u32 {
                for id in [0xc600_0000, 0x8600_0000] {
                    let result = hvc(id, 0, 0, 0);
                    if result != NOT_SUPPORTED {
                        return Outcome::WentThrough(result as u32, round);
                    }
                }
            }
            Outcome::Refused(NOT_SUPPORTED as u32, 3000)
        }),
        ("smccc-firmware-ids", |_| {
            // Silicon provider, OEM and Trusted OS services: the firmware's, not a cell's.
            for id in [0xc200_0000, 0xc300_0000, 0xf200_0000] {
                let by_hvc = hvc(id, 0, 0, 0);
                let by_smc = smc(id);
                if by_hvc != NOT_SUPPORTED || by_smc != NOT_SUPPORTED {
                    return Outcome::WentThrough(by_hvc as u32, by_smc as u32);
                }
            }
            Outcome::Refused(NOT_SUPPORTED as u32, NOT_SUPPORTED as u32)
        }),
        ("smccc-version", |_| {
            let version = hvc(0x8000_0000, 0, 0, 0);
            // SMCCC 1.x (major in bits 30:16), or not supported at all.
            expect(version == NOT_SUPPORTED || version >> 16 == 1, version, 0)
        }),
        ("hvc-unknown-immediate", |_| {
            // SMCCC calls use HVC #0; another immediate is no call the hypervisor knows:
            // NOT_SUPPORTED or an undefined instruction, never a PSCI answer.
            let mut result = 0i64;
            match checked(|| result = hvc_immediate_0x1234(PSCI_VERSION)) {
                Some(fault) if fault.esr.class() == EC_UNKNOWN => {
                    Outcome::Refused(fault.esr.0 as u32, 0)
                }
                Some(fault) => Outcome::Caught(fault),
                None => expect(result == NOT_SUPPORTED, result, 0),
            }
        }),
        ("sysreg-impdef", |_| {
            undefined(|| {
                let value: u64;
                // SAFETY: a read of an IMPLEMENTATION DEFINED encoding no CPU here has; it
                // must raise an undefined-instruction exception, which `fault::catch` takes.
                unsafe { asm!("mrs {}, s3_0_c15_c15_7", out(reg) value, options(nostack)) };
                value
            })
        }),
        ("sysreg-el2-hcr", |_| {
            undefined(|| {
                let value: u64;
                // SAFETY: an EL2 register read at EL1 is UNDEFINED (Arm ARM D23.2); the
                // exception is taken by `fault::catch`.
                unsafe { asm!("mrs {}, hcr_el2", out(reg) value, options(nostack)) };
                value
            })
        }),
        ("sysreg-icc-sgi1r-read", |env| {
            if env.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            undefined(|| {
                let value: u64;
                // SAFETY: ICC_SGI1R_EL1 is write-only: a read is UNDEFINED (or trapped to
                // the hypervisor); the exception is taken by `fault::catch`.
                unsafe { asm!("mrs {}, s3_0_c12_c11_5", out(reg) value, options(nostack)) };
                value
            })
        }),
        ("storm-virtual-timer", storm_virtual_timer),
        ("storm-sgi-self", storm_sgi_self),
        ("storm-spi-pending", storm_spi_pending),
        ("psci-system-off", |_| lifecycle(PSCI_SYSTEM_OFF)),
        ("psci-system-reset", |_| lifecycle(PSCI_SYSTEM_RESET)),
        ("never-answers", |_| {
            report(Status::Attacking, 0, 0, 0);
            // Every exception masked, no WFI, the mailbox never polled.
            sysreg::set_daif(0x3c0);
            loop {
                core::hint::spin_loop();
            }
        }),
        ("psci-cpu-off", |_| lifecycle(PSCI_CPU_OFF)),
        ("inherit-state", inherit_state),
        ("stuck-in-handler", stuck_in_handler),
        ("inherit-priority", inherit_priority),
    ];

    /// Takes its timer interrupt and never ends it: the handler spins with the interrupt
    /// active, so the virtual CPU interface holds its priority as active (GICv2's GICH_APR,
    /// GICv3's ICH_AP1R<n>_EL2) when the cell is destroyed. The next vCPU on this CPU must
    /// not inherit it (`inherit-priority`).
    fn stuck_in_handler(env: &Env) -> Outcome {
        let Ok(gic) = storm_gic(env) else {
            return Outcome::WentThrough(0, 0);
        };
        irq::set_handler(gic, |_| {
            println!("hostile-demo: in the handler for good");
            console::flush();
            loop {
                core::hint::spin_loop();
            }
        });
        if gic.enable(VIRTUAL_TIMER_INTID, DEFAULT_PRIORITY).is_err() {
            return Outcome::WentThrough(1, 0);
        }
        timer::set_deadline(0);
        storm(sysreg::wfi)
    }

    /// The running priority of this CPU's (virtual) interface at entry: refused when it is
    /// idle (0xff), nothing active left by the vCPU before. `a` = the running priority. The
    /// heartbeat that follows needs the timer interrupt, at the default priority, to come.
    fn inherit_priority(env: &Env) -> Outcome {
        let running = match env.version {
            Version::V3 => {
                let value: u64;
                // SAFETY: ICC_RPR_EL1 (ICV_RPR_EL1 for a vCPU) is read-only, no side effects.
                unsafe { asm!("mrs {}, s3_0_c12_c11_3", out(reg) value, options(nomem, nostack)) };
                value as u32 & 0xff
            }
            // GICC_RPR (IHI 0048B §4.4.6), in the cell's CPU interface.
            Version::V2 => read32(env.gicr + 0x14) & 0xff,
        };
        expect(running == 0xff, i64::from(running), 0)
    }

    /// Reads what the previous vCPU on this CPU left (the root cell's Linux ran on it between
    /// two cases: its per-CPU offset in TPIDR_EL1, its FP/SIMD registers, its enabled PPIs):
    /// refused if all of it reads as zero. `a` = which register was not (1 TPIDR_EL0,
    /// 2 TPIDRRO_EL0, 3 TPIDR_EL1, 4 CONTEXTIDR_EL1, 5 TTBR0_EL1, 6 TTBR1_EL1, 7 CNTV_CVAL_EL0,
    /// 8 the V registers and FPSR at entry, 9 the GIC's enabled or pending private
    /// interrupts),
    /// `b` = its low half.
    fn inherit_state(env: &Env) -> Outcome {
        let (tpidr0, tpidrro0, tpidr1, contextidr, ttbr0, ttbr1, cval): (
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
        );
        // SAFETY: reads of EL0/EL1 registers, no side effects.
        unsafe {
            asm!(
                "mrs {0}, tpidr_el0",
                "mrs {1}, tpidrro_el0",
                "mrs {2}, tpidr_el1",
                "mrs {3}, contextidr_el1",
                "mrs {4}, ttbr0_el1",
                "mrs {5}, ttbr1_el1",
                "mrs {6}, cntv_cval_el0",
                out(reg) tpidr0,
                out(reg) tpidrro0,
                out(reg) tpidr1,
                out(reg) contextidr,
                out(reg) ttbr0,
                out(reg) ttbr1,
                out(reg) cval,
                options(nomem, nostack, preserves_flags)
            );
        }
        // What the V registers and FPSR held at the inmate's first instruction (the inmate's
        // own code uses them since).
        let fp = cellvisor_inmate::entry_fp_residue();
        // The private interrupts enabled or pending on this CPU (the cell's view: the
        // hypervisor's own read as zero). GICv3: the redistributor's SGI frame; GICv2: the
        // banked first distributor word.
        let private = match env.version {
            Version::V3 => {
                read32(env.gicr + GICR_SGI_BASE + GICD_ISENABLER)
                    | read32(env.gicr + GICR_SGI_BASE + GICD_ISPENDR)
            }
            // SGIs may be enabled for good on GICv2 (IHI 0048B §4.3.5: their enable bits can
            // be RAO/WI; QEMU's are): only their pending state counts there.
            Version::V2 => {
                read32(env.gicd + GICD_ISENABLER) & !0xffff | read32(env.gicd + GICD_ISPENDR)
            }
        };
        let leftovers = [
            tpidr0,
            tpidrro0,
            tpidr1,
            contextidr,
            ttbr0,
            ttbr1,
            cval,
            fp,
            u64::from(private),
        ];
        match leftovers.iter().position(|&value| value != 0) {
            None => Outcome::Refused(0, 0),
            Some(index) => Outcome::WentThrough(index as u32 + 1, leftovers[index] as u32),
        }
    }

    /// What the cases need to know about the machine.
    struct Env {
        version: Version,
        gicd: usize,
        /// GICv2: the CPU interface; GICv3: this CPU's redistributor.
        gicr: usize,
        platform: Platform,
    }

    impl Env {
        /// Sets `intid`'s bit in the distributor's one-bit-per-INTID register array at
        /// `offset`.
        fn set_bit(&self, offset: usize, intid: u32) {
            write32(
                self.gicd + offset + (intid as usize / 32) * 4,
                1 << (intid % 32),
            );
        }

        /// The redistributor of the neighbouring CPU (the previous one, or the next for the
        /// first).
        fn foreign_redistributor(&self) -> usize {
            if sysreg::mpidr_el1() & 0xff != 0 {
                self.gicr - GICR_FRAME
            } else {
                self.gicr + GICR_FRAME
            }
        }

        /// GICv3: disables one of this CPU's SGIs or PPIs that the hypervisor keeps for
        /// itself (SGI 15, the maintenance interrupt 25, the EL2 timer 26).
        fn disable_own_private(&self, intid: u32) -> Outcome {
            if self.version != Version::V3 {
                return Outcome::NotApplicable;
            }
            let address = self.gicr + GICR_ICENABLER0;
            stop(|| write32(address, 1 << intid))
        }

        /// Writes `new(before)` to the distributor register at `offset`; refused if the bits
        /// of `mask` read back as before (and, with `must_be_set`, are all set).
        fn unchanged_after(
            &self,
            offset: usize,
            new: impl Fn(u32) -> u32,
            mask: u32,
            must_be_set: bool,
        ) -> Outcome {
            let address = self.gicd + offset;
            let before = read32(address);
            if let Some(fault) = checked(|| write32(address, new(before))) {
                return Outcome::Caught(fault);
            }
            let after = read32(address);
            let kept = after & mask == before & mask && (!must_be_set || after & mask == mask);
            if kept {
                Outcome::Refused(before, after)
            } else {
                Outcome::WentThrough(before, after)
            }
        }
    }

    fn main(platform: &Platform) -> ! {
        let case = read32(SHARED + CASE);
        let Some(version) = Version::from_abi(platform.gic_version.get()) else {
            println!("hostile-demo: unknown GIC version");
            park();
        };
        let env = Env {
            version,
            gicd: platform.gicd.get() as usize,
            gicr: platform.gicr_or_gicc.get() as usize,
            platform: *platform,
        };
        let Some((name, run)) = (case as usize)
            .checked_sub(1)
            .and_then(|index| CASES.get(index))
        else {
            println!("hostile-demo: no case {case} (1..={})", CASES.len());
            park();
        };
        println!("hostile-demo: case {case} {name}");
        console::flush();
        report(Status::Attacking, 0, 0, 0);
        let (status, a, b, esr) = match run(&env) {
            Outcome::Refused(a, b) => (Status::Refused, a, b, 0),
            Outcome::WentThrough(a, b) => (Status::WentThrough, a, b, 0),
            Outcome::Caught(fault) => (
                Status::WentThrough,
                fault.elr as u32,
                fault.far as u32,
                fault.esr.0,
            ),
            Outcome::NotApplicable => (Status::NotApplicable, 0, 0, 0),
        };
        let word = match status {
            Status::Refused => "refused",
            Status::NotApplicable => "not applicable",
            _ => "went through",
        };
        println!("hostile-demo: case {case} {word}: a={a:#x} b={b:#x} esr={esr:#x}");
        console::flush();
        report(status, a, b, esr);
        // Show that the cell goes on: a heartbeat the root cell watches; approve a shutdown.
        let (mut ticker, _) = Ticker::start(platform, 10_000_000);
        let mut mailbox = cellvisor_inmate::comm::Mailbox::new();
        let mut beats: u32 = 0;
        loop {
            ticker.wait();
            beats = beats.wrapping_add(1);
            write32(SHARED + HEARTBEAT, beats);
            if mailbox.poll() == Some(cellvisor_inmate::comm::Message::ShutdownRequest) {
                mailbox.approve_and_park("hostile-demo");
            }
        }
    }

    /// Writes the result words, status last (the root cell polls it).
    fn report(status: Status, a: u32, b: u32, esr: u64) {
        write32(SHARED + VALUE_A, a);
        write32(SHARED + VALUE_B, b);
        write32(SHARED + ESR, esr as u32);
        write32(SHARED + STATUS, status as u32);
    }

    /// An access the hypervisor must stop the cell at: anything after it means it was not.
    fn stop(access: impl FnOnce()) -> Outcome {
        match fault::catch(access) {
            Some(fault) => Outcome::Caught(fault),
            None => Outcome::WentThrough(0, 0),
        }
    }

    /// Runs `access` with exceptions caught.
    fn checked(access: impl FnOnce()) -> Option<Fault> {
        fault::catch(access)
    }

    /// `refused` or not, with the value that decided it.
    fn expect(refused: bool, value: i64, other: u32) -> Outcome {
        if refused {
            Outcome::Refused(value as u32, other)
        } else {
            Outcome::WentThrough(value as u32, other)
        }
    }

    /// An instruction that must raise an undefined-instruction exception (EC 0) at EL1.
    fn undefined(access: impl FnOnce() -> u64) -> Outcome {
        let mut value = 0;
        match checked(|| value = access()) {
            Some(fault) if fault.esr.class() == EC_UNKNOWN => {
                Outcome::Refused(fault.esr.0 as u32, 0)
            }
            Some(fault) => Outcome::Caught(fault),
            None => Outcome::WentThrough(value as u32, (value >> 32) as u32),
        }
    }

    /// A branch to the hypervisor's image: an instruction abort there. Not under
    /// `fault::catch`: resuming 4 bytes further would fault again.
    fn jump_outside(_: &Env) -> Outcome {
        // SAFETY: deliberately unsound for the cell: the hypervisor must stop it at the
        // instruction fetch. Should it return, the callee's x30 leads back here.
        unsafe { asm!("blr {}", in(reg) HYPERVISOR, clobber_abi("C")) };
        Outcome::WentThrough(0, 0)
    }

    /// DC ZVA to memory of another cell. With the MMU off data accesses are Device memory,
    /// where DC ZVA takes an alignment fault at EL1 before stage 2 (Arm ARM D7.4.10): then
    /// nothing reached the memory either, and the inmate reports the refusal it saw.
    fn dc_zva_outside(_: &Env) -> Outcome {
        let fault = fault::catch(|| {
            // SAFETY: deliberately outside the cell (see above); no Rust-visible memory.
            unsafe { asm!("dc zva, {}", in(reg) ROOT_RAM, options(nostack)) }
        });
        match fault {
            // A data abort at EL1 with an alignment fault status.
            Some(fault) if fault.esr.class() == 0x25 && fault.esr.iss() & 0x3f == 0x21 => {
                Outcome::Refused(fault.esr.0 as u32, fault.far as u32)
            }
            Some(fault) => Outcome::Caught(fault),
            None => Outcome::WentThrough(0, 0),
        }
    }

    /// PSCI SYSTEM_OFF, SYSTEM_RESET or CPU_OFF from the cell: the root cell judges the
    /// cell's state; returning at all is worth a report.
    fn lifecycle(function: u64) -> Outcome {
        report(Status::Attacking, 0, 0, 0);
        if function == PSCI_SYSTEM_RESET {
            write32(SHARED + RESETS, read32(SHARED + RESETS).wrapping_add(1));
        }
        let status = hvc(function, 0, 0, 0);
        Outcome::WentThrough(status as u32, 0)
    }

    /// The timer storm: the handler re-arms the virtual timer in the past.
    fn storm_virtual_timer(env: &Env) -> Outcome {
        let Ok(gic) = storm_gic(env) else {
            return Outcome::WentThrough(0, 0);
        };
        irq::set_handler(gic, |_| timer::set_deadline(0));
        if gic.enable(VIRTUAL_TIMER_INTID, DEFAULT_PRIORITY).is_err() {
            return Outcome::WentThrough(1, 0);
        }
        timer::set_deadline(0);
        storm(sysreg::wfi)
    }

    /// The SGI storm: SGI 1 to this CPU, again and again, also from its handler.
    fn storm_sgi_self(env: &Env) -> Outcome {
        let Ok(gic) = storm_gic(env) else {
            return Outcome::WentThrough(0, 0);
        };
        const SGI: u32 = 1;
        if gic.enable(SGI, DEFAULT_PRIORITY).is_err() {
            return Outcome::WentThrough(1, 0);
        }
        // Written once, before IRQs are unmasked; the handler only reads them.
        static mut GICD: usize = 0;
        static mut V3: bool = false;
        // SAFETY: IRQs are still masked: no handler reads them yet.
        unsafe {
            GICD = env.gicd;
            V3 = env.version == Version::V3;
        }
        fn send() {
            // SAFETY: set before IRQs were unmasked, never written again.
            let (gicd, v3) = unsafe { (GICD, V3) };
            if v3 {
                let mpidr = sysreg::mpidr_el1();
                let aff1 = (mpidr >> 8) & 0xff;
                let aff2 = (mpidr >> 16) & 0xff;
                let aff3 = (mpidr >> 32) & 0xff;
                let list = 1 << (mpidr & 0xf);
                write_icc_sgi1r(aff3 << 48 | aff2 << 32 | u64::from(SGI) << 24 | aff1 << 16 | list);
            } else {
                // TargetListFilter 0b10: this CPU only.
                write32(gicd + GICD_SGIR, 0b10 << 24 | SGI);
            }
        }
        irq::set_handler(gic, |_: Interrupt| send());
        storm(send)
    }

    /// The pending storm: the cell's own SPI set pending again and again, also from its
    /// handler (each one a list-register refill and maintenance work for the hypervisor).
    fn storm_spi_pending(env: &Env) -> Outcome {
        let Ok(gic) = storm_gic(env) else {
            return Outcome::WentThrough(0, 0);
        };
        if gic.enable(OWN_SPI, DEFAULT_PRIORITY).is_err() {
            return Outcome::WentThrough(1, 0);
        }
        static mut PEND: usize = 0;
        // SAFETY: IRQs are still masked: no handler reads it yet.
        unsafe { PEND = env.gicd + GICD_ISPENDR + (OWN_SPI as usize / 32) * 4 };
        fn pend() {
            // SAFETY: set before IRQs were unmasked, never written again.
            let address = unsafe { PEND };
            write32(address, 1 << (OWN_SPI % 32));
        }
        irq::set_handler(gic, |_: Interrupt| pend());
        storm(pend)
    }

    fn storm_gic(env: &Env) -> Result<Gic, cellvisor_inmate::gic::Error> {
        let gic = Gic::from_platform(&env.platform)?;
        gic.init()?;
        Ok(gic)
    }

    /// Reports the storm, unmasks IRQs and runs `step` forever.
    fn storm(step: fn()) -> ! {
        report(Status::Storming, 0, 0, 0);
        println!("hostile-demo: storming");
        console::flush();
        irq::enable();
        loop {
            step();
        }
    }

    // Single accesses of each width, in assembly so that the compiler neither merges nor
    // splits them (the hypervisor emulates or refuses each one by its syndrome).

    fn read8(address: usize) -> u8 {
        let value: u32;
        // SAFETY: a single byte load from a device or memory address the case chose; no
        // Rust-visible memory is involved. The hypervisor may stop the cell here.
        unsafe { asm!("ldrb {:w}, [{}]", out(reg) value, in(reg) address, options(nostack)) };
        value as u8
    }

    fn write8(address: usize, value: u8) {
        // SAFETY: as `read8`, a single byte store.
        unsafe {
            asm!("strb {:w}, [{}]", in(reg) u32::from(value), in(reg) address, options(nostack))
        };
    }

    fn read16(address: usize) -> u16 {
        let value: u32;
        // SAFETY: as `read8`, a single halfword load.
        unsafe { asm!("ldrh {:w}, [{}]", out(reg) value, in(reg) address, options(nostack)) };
        value as u16
    }

    fn read32(address: usize) -> u32 {
        // SAFETY: a single 32-bit load (see `read8`).
        unsafe { MmioRegion::new(address) }.read32(0)
    }

    fn write32(address: usize, value: u32) {
        // SAFETY: a single 32-bit store (see `read8`).
        unsafe { MmioRegion::new(address) }.write32(0, value)
    }

    fn write64(address: usize, value: u64) {
        // SAFETY: a single 64-bit store (see `read8`).
        unsafe { MmioRegion::new(address) }.write64(0, value)
    }

    /// A load pair: no valid syndrome for the hypervisor to emulate it from.
    fn ldp(address: usize) {
        // SAFETY: as `read8`, two 32-bit loads in one instruction.
        unsafe {
            asm!("ldp {:w}, {:w}, [{}]", out(reg) _, out(reg) _, in(reg) address, options(nostack))
        };
    }

    fn write_icc_sgi1r(value: u64) {
        // SAFETY: ICC_SGI1R_EL1 (GICv3 §12.11.25) sends an SGI; no memory is involved.
        unsafe { asm!("msr s3_0_c12_c11_5, {}", "isb", in(reg) value, options(nostack)) };
    }

    /// An SMCCC call through HVC #0 with three arguments; returns x0.
    fn hvc(function: u64, a: u64, b: u64, c: u64) -> i64 {
        let result: u64;
        // SAFETY: a firmware call to the hypervisor; SMCCC 1.1 keeps x4-x17 but results in
        // x0-x3, which are marked clobbered. No memory of this program is touched.
        unsafe {
            asm!(
                "hvc #0",
                inout("x0") function => result,
                inout("x1") a => _,
                inout("x2") b => _,
                inout("x3") c => _,
                options(nostack),
            )
        };
        result as i64
    }

    /// The same through HVC #0x1234.
    fn hvc_immediate_0x1234(function: u64) -> i64 {
        let result: u64;
        // SAFETY: as `hvc`.
        unsafe {
            asm!(
                "hvc #0x1234",
                inout("x0") function => result,
                out("x1") _,
                out("x2") _,
                out("x3") _,
                options(nostack),
            )
        };
        result as i64
    }

    /// An SMCCC call through SMC #0 without arguments; returns x0.
    fn smc(function: u64) -> i64 {
        let result: u64;
        // SAFETY: as `hvc`; the hypervisor traps SMC.
        unsafe {
            asm!(
                "smc #0",
                inout("x0") function => result,
                out("x1") _,
                out("x2") _,
                out("x3") _,
                options(nostack),
            )
        };
        result as i64
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
