//! safetensors files, memory-mapped and validated before anything reads them.
//!
//! Format: an 8-byte little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the
//! data; offsets are relative to the end of the header. Every tensor is checked
//! (dtype known, byte length = product(shape) * dtype size, offsets inside the file, no
//! two tensors overlapping) so that later views are always in bounds.

use crate::error::{Error, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bf16,
    F16,
    F32,
    F64,
    U8,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    U64,
    Bool,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BF16" => Dtype::Bf16,
            "F16" => Dtype::F16,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "I16" => Dtype::I16,
            "I32" => Dtype::I32,
            "I64" => Dtype::I64,
            "U16" => Dtype::U16,
            "U32" => Dtype::U32,
            "U64" => Dtype::U64,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 | Dtype::Bool => 1,
            Dtype::Bf16 | Dtype::F16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::U16 => "U16",
            Dtype::U32 => "U32",
            Dtype::U64 => "U64",
            Dtype::Bool => "BOOL",
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into `Checkpoint::files`.
    pub file: usize,
    /// Absolute byte range in that file.
    pub start: usize,
    pub end: usize,
}

pub struct MappedFile {
    pub path: PathBuf,
    pub map: Mmap,
    /// The open file, for `Checkpoint::read_at` (reads that must not map pages).
    pub file: File,
}

/// All tensors of a (possibly sharded) checkpoint.
pub struct Checkpoint {
    pub files: Vec<MappedFile>,
    pub tensors: HashMap<String, TensorInfo>,
}

fn ck<T>(path: &Path, msg: impl std::fmt::Display) -> Result<T> {
    Err(Error::Checkpoint(format!("{}: {msg}", path.display())))
}

/// Parse and check one file's header against its length.
fn parse_header(path: &Path, bytes: &[u8], file_index: usize) -> Result<Vec<TensorInfo>> {
    let len = bytes.len();
    if len < 8 {
        return ck(path, format!("file is {len} bytes, too short for a safetensors header (8 bytes)"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > (len as u64 - 8) {
        return ck(path, format!("header length {n} exceeds the file size {len} (truncated or not safetensors)"));
    }
    let n = n as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| Error::Checkpoint(format!("{}: header is not valid JSON: {e}", path.display())))?;
    let obj = match header.as_object() {
        Some(o) => o,
        None => return ck(path, "header is not a JSON object"),
    };
    let data_start = 8 + n;
    let data_len = len - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: String| Error::Checkpoint(format!("{}: tensor {name:?}: {m}", path.display()));
        let e = match entry.as_object() {
            Some(e) => e,
            None => return Err(bad("entry is not an object".into())),
        };
        let dtype_s = e.get("dtype").and_then(|v| v.as_str()).unwrap_or("<missing>");
        let dtype = match Dtype::parse(dtype_s) {
            Some(d) => d,
            None => return Err(bad(format!("unknown dtype {dtype_s:?}"))),
        };
        let shape: Option<Vec<usize>> = e
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let shape = match shape {
            Some(s) => s,
            None => return Err(bad("shape is missing or not a list of integers".into())),
        };
        let offs: Option<Vec<u64>> =
            e.get("data_offsets").and_then(|v| v.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (b, en) = match offs.as_deref() {
            Some([b, en]) => (*b, *en),
            _ => return Err(bad("data_offsets is missing or not [begin, end]".into())),
        };
        if b > en || en > data_len as u64 {
            return Err(bad(format!(
                "data_offsets [{b}, {en}] out of range: the data section holds {data_len} bytes (truncated file?)"
            )));
        }
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let want = numel.and_then(|n| n.checked_mul(dtype.size() as u64));
        if want != Some(en - b) {
            return Err(bad(format!(
                "shape {shape:?} of {} needs {} bytes but data_offsets span {}",
                dtype.name(),
                want.map_or("too many".to_string(), |w| w.to_string()),
                en - b
            )));
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            file: file_index,
            start: data_start + b as usize,
            end: data_start + en as usize,
        });
    }
    // No two tensors may share bytes.
    let mut sorted: Vec<&TensorInfo> = out.iter().filter(|t| t.end > t.start).collect();
    sorted.sort_by_key(|t| t.start);
    for w in sorted.windows(2) {
        if w[1].start < w[0].end {
            return ck(path, format!("tensors {:?} and {:?} overlap in the data section", w[0].name, w[1].name));
        }
    }
    Ok(out)
}

impl Checkpoint {
    /// Map and validate safetensors files (one, or the shards of one checkpoint).
    pub fn open(paths: &[PathBuf]) -> Result<Checkpoint> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).or_else(|e| ck(path, format!("cannot open: {e}")))?;
            // SAFETY: the map is read-only; a checkpoint modified on disk while mapped is
            // outside what any reader can defend against (as with every mmap loader).
            let map = unsafe { Mmap::map(&file) }.or_else(|e| ck(path, format!("cannot memory-map: {e}")))?;
            for t in parse_header(path, &map, i)? {
                if let Some(prev) = tensors.get(&t.name) {
                    let prev: &TensorInfo = prev;
                    return ck(path, format!("tensor {:?} also appears in {}", t.name, paths[prev.file].display()));
                }
                tensors.insert(t.name.clone(), t);
            }
            files.push(MappedFile { path: path.clone(), map, file });
        }
        Ok(Checkpoint { files, tensors })
    }

    /// The safetensors files of a model folder: `model.safetensors.index.json` (shards)
    /// or a single `model.safetensors` (or the only `*.safetensors` file).
    pub fn files_in(dir: &Path) -> Result<(Vec<PathBuf>, Option<HashMap<String, String>>)> {
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).or_else(|e| ck(&index, format!("cannot read: {e}")))?;
            let v: Value = serde_json::from_str(&text).or_else(|e| ck(&index, format!("invalid JSON: {e}")))?;
            let map = match v.get("weight_map").and_then(|m| m.as_object()) {
                Some(m) => m,
                None => return ck(&index, "no \"weight_map\" object"),
            };
            let mut weight_map = HashMap::new();
            let mut names: Vec<String> = Vec::new();
            for (t, f) in map {
                let f = match f.as_str() {
                    Some(f) if !f.contains("..") && !f.starts_with('/') => f.to_string(),
                    _ => return ck(&index, format!("weight_map[{t:?}] is not a file name in this folder")),
                };
                if !names.contains(&f) {
                    names.push(f.clone());
                }
                weight_map.insert(t.clone(), f);
            }
            names.sort();
            let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
            for p in &paths {
                if !p.is_file() {
                    return ck(&index, format!("names shard {} which does not exist", p.display()));
                }
            }
            return Ok((paths, Some(weight_map)));
        }
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok((vec![single], None));
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .or_else(|e| ck(dir, format!("cannot list folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        if found.is_empty() {
            return ck(dir, "no model.safetensors, model.safetensors.index.json or *.safetensors file");
        }
        Ok((found, None))
    }

    /// Open a folder's checkpoint, checking the shard index (if any) against the files.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let (paths, weight_map) = Checkpoint::files_in(dir)?;
        let ckpt = Checkpoint::open(&paths)?;
        if let Some(wm) = weight_map {
            for (t, f) in &wm {
                match ckpt.tensors.get(t) {
                    None => {
                        return ck(
                            &dir.join(f),
                            format!("tensor {t:?} listed in model.safetensors.index.json is missing"),
                        )
                    }
                    Some(info)
                        if ckpt.files[info.file].path.file_name().and_then(|n| n.to_str()) != Some(f.as_str()) =>
                    {
                        return ck(&ckpt.files[info.file].path, format!("tensor {t:?} is here, but the index says {f}"))
                    }
                    _ => {}
                }
            }
        }
        Ok(ckpt)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn path(&self, t: &TensorInfo) -> &Path {
        &self.files[t.file].path
    }

    /// The tensor's bytes, zero-copy from the map (in bounds: checked at open).
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.files[t.file].map[t.start..t.end]
    }

    /// Copy `out.len()` bytes from `offset` within tensor `t` through a positioned read,
    /// not the map: rows picked at random (the embedding's, one per token) would otherwise
    /// map whole neighbourhoods of the file (fault-around, or a 2 MB page where the page
    /// cache holds huge folios) into this process and grow its RSS by up to the tensor.
    pub fn read_at(&self, t: &TensorInfo, offset: usize, out: &mut [u8]) -> Result<()> {
        let start = t.start + offset;
        assert!(start + out.len() <= t.end, "read_at past the end of tensor {:?}", t.name);
        let f = &self.files[t.file];
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            f.file.read_exact_at(out, start as u64).or_else(|e| {
                ck(&f.path, format!("tensor {:?}: cannot read {} bytes at {start}: {e}", t.name, out.len()))
            })
        }
        #[cfg(not(unix))]
        {
            out.copy_from_slice(&f.map[start..start + out.len()]);
            Ok(())
        }
    }

    /// Unmap a tensor's pages from this process once it has been copied elsewhere (the
    /// Q8 attention and lm_head matrices), so they leave its RSS. The file and the page
    /// cache are untouched; a later read would map them again with the same contents.
    pub fn release(&self, t: &TensorInfo) {
        #[cfg(unix)]
        // SAFETY: the map is a read-only view of the file: MADV_DONTNEED drops page table
        // entries only, and the pages fault back in unchanged if ever read again.
        unsafe {
            let _ = self.files[t.file].map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                t.start,
                t.end - t.start,
            );
        }
    }

    /// The named tensor, checked for dtype and shape; errors name file, tensor, expected and found.
    pub fn expect(&self, name: &str, dtypes: &[Dtype], shape: &[usize]) -> Result<&TensorInfo> {
        let t = self.get(name).ok_or_else(|| {
            let files: Vec<String> = self.files.iter().map(|f| f.path.display().to_string()).collect();
            Error::Checkpoint(format!("required tensor {name:?} is missing from {}", files.join(", ")))
        })?;
        if !dtypes.contains(&t.dtype) {
            let want: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
            return ck(
                self.path(t),
                format!("tensor {name:?}: expected dtype {}, found {}", want.join(" or "), t.dtype.name()),
            );
        }
        if t.shape != shape {
            return ck(
                self.path(t),
                format!("tensor {name:?}: expected shape {shape:?} (from the config), found {:?}", t.shape),
            );
        }
        Ok(t)
    }

    /// A 1-D BF16 or F32 tensor as f32 values (small tensors: norms, biases, sinks).
    pub fn vector_f32(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.expect(name, &[Dtype::Bf16, Dtype::F32], &[len])?;
        Ok(self.to_f32(t))
    }

    /// Any BF16 or F32 tensor widened to f32 (copies: only for small tensors).
    pub fn to_f32(&self, t: &TensorInfo) -> Vec<f32> {
        let b = self.bytes(t);
        match t.dtype {
            Dtype::Bf16 => b.chunks_exact(2).map(|c| crate::bf16::to_f32(c[0], c[1])).collect(),
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => unreachable!("to_f32 on {:?}", t.dtype),
        }
    }

    /// Total bytes of the mapped files.
    pub fn mapped_bytes(&self) -> usize {
        self.files.iter().map(|f| f.map.len()).sum()
    }
}
