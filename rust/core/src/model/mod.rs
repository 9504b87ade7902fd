//! The model: config, checkpoint, weights, and the forward pass.

pub mod argmax;
pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod forward;
pub mod rope;
pub mod weights;

use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::kernels::Precision;
use crate::runtime::{KvCache, KvDtype};
use checkpoint::Checkpoint;
use config::Config;
use rope::Rope;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use weights::Weights;

pub struct LoadOptions {
    /// Tokens a session's KV cache holds (default: the config's max_position_embeddings).
    pub max_context: Option<usize>,
    /// Kernel path (from `cpu::select`).
    pub isa: Isa,
    /// Activation precision of the MXFP4 expert matmuls (the router, attention and
    /// lm_head use f32 activations unless `q8`).
    pub precision: Precision,
    /// Quantize the attention and lm_head matrices to Q8 at load (`precision="q8"`).
    pub q8: bool,
}

/// A loaded model: the memory-mapped checkpoint and typed views into it. Immutable, so
/// any number of sessions on any number of threads can share it.
pub struct Model {
    pub dir: PathBuf,
    pub config: Config,
    pub ckpt: Checkpoint,
    pub weights: Weights,
    pub rope: Rope,
    pub isa: Isa,
    pub precision: Precision,
    pub max_context: usize,
    /// How sessions' caches store K and V rows (bf16 in the q8 mode, else f32).
    pub kv_dtype: KvDtype,
    /// lm_head's screen for greedy decoding, built on first use (`argmax.rs`); None
    /// where lm_head is already Q8 or cannot be screened.
    pub screen: OnceLock<Option<argmax::Screen>>,
    /// Held while the screen is built. Calls that find it taken compute every logit
    /// instead of waiting: a rayon worker building it may itself pick up another
    /// session's step, which must not block on the build it is inside of.
    pub screen_building: std::sync::Mutex<()>,
}

impl Model {
    /// Load a model folder (Hugging Face layout or OpenAI's `original/` layout).
    /// Reads only the headers and the small 1-D tensors; the matrices stay mapped.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Model> {
        if !dir.is_dir() {
            return Err(Error::Checkpoint(format!("{}: not a folder", dir.display())));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::Checkpoint(format!("{}: missing config.json", dir.display())));
        }
        let config = Config::from_file(&cfg_path)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let mut weights = Weights::load(&ckpt, &config)?;
        let max_context = opts.max_context.unwrap_or(config.max_position_embeddings);
        if max_context == 0 || max_context > config.max_position_embeddings {
            return Err(Error::Value(format!(
                "max_context must be in 1..={} (the model's max_position_embeddings), got {max_context}",
                config.max_position_embeddings
            )));
        }
        // Last: seconds of work that a bad argument above should not cost.
        if opts.q8 {
            weights.quantize_q8(&ckpt);
        }
        let rope = Rope::new(&config);
        Ok(Model {
            dir: dir.to_path_buf(),
            config,
            ckpt,
            weights,
            rope,
            isa: opts.isa,
            precision: opts.precision,
            max_context,
            // bf16 rows (as llama.cpp's default f16 cache, beside the Q8_0 GGUFs the q8
            // mode matches) stay within q8's stated fidelity; in "auto" they did not
            // (tiny-b: max |dlogit| 0.16 against its 5e-2 bound), so it keeps f32 rows.
            kv_dtype: if opts.q8 { KvDtype::Bf16 } else { KvDtype::F32 },
            screen: OnceLock::new(),
            screen_building: std::sync::Mutex::new(()),
        })
    }

    /// Read the checkpoint files once, so they are in the page cache before timing or
    /// serving. They are read with `read`, not through the map: pages the model never
    /// touches do not count in this process's RSS. Returns the bytes read.
    pub fn warm(&self) -> Result<usize> {
        use std::io::Read;
        let mut buf = vec![0u8; 16 << 20];
        let mut total = 0;
        for f in &self.ckpt.files {
            let mut file = std::fs::File::open(&f.path)
                .map_err(|e| Error::Checkpoint(format!("{}: cannot read: {e}", f.path.display())))?;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| Error::Checkpoint(format!("{}: cannot read: {e}", f.path.display())))?;
                if n == 0 {
                    break;
                }
                total += n;
            }
        }
        Ok(total)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.config.num_hidden_layers,
            self.config.num_key_value_heads,
            self.config.head_dim,
            self.max_context,
            self.kv_dtype,
        )
    }
}
