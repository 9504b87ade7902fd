//! CPU features and the single runtime dispatch point for kernel paths.
//!
//! The path comes from the CPU's features at run time, never from build flags.
//! `GPTOSS_NATIVE_KERNELS=scalar|avx2|avx512|neon` forces one (tests use it to run
//! every path on one machine); forcing a path the CPU lacks is an error, not a silent fallback.

use crate::error::{Error, Result};

/// A kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust: the reference twin of every SIMD kernel.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL.
    Avx512,
    /// aarch64 NEON.
    Neon,
}

pub const ENV_VAR: &str = "GPTOSS_NATIVE_KERNELS";

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        let f = features();
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => f.avx2 && f.fma,
            Isa::Avx512 => f.avx512f && f.avx512bw && f.avx512vl,
            Isa::Neon => f.neon,
        }
    }

    /// Every path this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }
}

/// What the CPU offers (the subset the kernels care about).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    /// AVX-VNNI: VEX-encoded 256-bit `vpdpbusd`/`vpdpwssd` (Intel from Alder Lake, AMD
    /// Zen 5), which the AVX2 path's int GEMV and packed GEMM take where present.
    pub avxvnni: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512vnni: bool,
    /// `vpermb`, which the AVX-512 int GEMVs decode codes with where present.
    pub avx512vbmi: bool,
    pub avx512bf16: bool,
    pub neon: bool,
    /// aarch64 FEAT_DotProd (`sdot`), which the NEON int kernels take where present.
    pub dotprod: bool,
}

pub fn features() -> Features {
    #[cfg(target_arch = "x86_64")]
    {
        Features {
            avx2: is_x86_feature_detected!("avx2"),
            fma: is_x86_feature_detected!("fma"),
            f16c: is_x86_feature_detected!("f16c"),
            avxvnni: is_x86_feature_detected!("avxvnni"),
            avx512f: is_x86_feature_detected!("avx512f"),
            avx512bw: is_x86_feature_detected!("avx512bw"),
            avx512vl: is_x86_feature_detected!("avx512vl"),
            avx512vnni: is_x86_feature_detected!("avx512vnni"),
            avx512vbmi: is_x86_feature_detected!("avx512vbmi"),
            avx512bf16: is_x86_feature_detected!("avx512bf16"),
            neon: false,
            dotprod: false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        Features {
            neon: std::arch::is_aarch64_feature_detected!("neon"),
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            ..Default::default()
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Features::default()
    }
}

/// The best path for this CPU.
pub fn best() -> Isa {
    if Isa::Avx512.supported() {
        Isa::Avx512
    } else if Isa::Avx2.supported() {
        Isa::Avx2
    } else if Isa::Neon.supported() {
        Isa::Neon
    } else {
        Isa::Scalar
    }
}

/// The path to use: `forced` (or, if None, the environment variable) when given, else the best.
/// Returns the path and a sentence saying why it was chosen.
pub fn select(forced: Option<&str>) -> Result<(Isa, String)> {
    let env = std::env::var(ENV_VAR).ok();
    let (req, source) = match forced {
        Some(s) => (Some(s.to_string()), "requested"),
        None => (env.filter(|s| !s.trim().is_empty()), ENV_VAR),
    };
    match req {
        None => {
            let isa = best();
            Ok((isa, format!("{} is the best path this CPU supports", isa.name())))
        }
        Some(s) => {
            let isa = Isa::parse(&s).ok_or_else(|| {
                Error::Value(format!("{source}={s:?} is not a kernel path; expected one of scalar, avx2, avx512, neon"))
            })?;
            if !isa.supported() {
                return Err(Error::Other(format!(
                    "{source}={s:?}: this CPU does not support the {} path (available: {})",
                    isa.name(),
                    Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok((isa, format!("forced by {source}={s}")))
        }
    }
}
