//! Deterministic benchmark inputs: the same seed and length always give the same
//! bytes, on every machine and whatever the thread count.
//!
//! - [`DataKind::Random`]: incompressible bytes, the BLAKE3 extendable output of the
//!   seed.
//! - [`DataKind::Text`]: Rust-like source code built line by line from a fixed
//!   vocabulary with a seeded RNG. zstd-3 compresses it about 4.5× over 64 KiB
//!   chunks, at about the speed of real Rust sources (which compress about 4.7×).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Inputs are generated in independent blocks of this size (1 MiB), each from its own
/// seed, so generation can run in parallel and stays deterministic.
const BLOCK: usize = 1 << 20;

/// BLAKE3 `derive_key` context of the key that turns a seed into per-block seeds.
const SEED_CONTEXT: &str = "fsync-bench 2026-01 generated data block seeds v1";

/// The kind of generated input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DataKind {
    /// Incompressible bytes.
    Random,
    /// Source-code-like text, compressible.
    Text,
}

impl DataKind {
    /// Both kinds, in report order.
    pub(crate) const ALL: [Self; 2] = [Self::Random, Self::Text];

    /// The value of the `data` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Text => "text",
        }
    }
}

/// `len` bytes of `kind`, determined by `seed`.
pub(crate) fn generate(kind: DataKind, len: usize, seed: u64) -> Vec<u8> {
    let seeds_key = blake3::derive_key(SEED_CONTEXT, &seed.to_le_bytes());
    let mut data = vec![0u8; len];
    data.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(i, block)| {
            let block_seed = blake3::keyed_hash(&seeds_key, &(i as u64).to_le_bytes());
            match kind {
                DataKind::Random => random_block(block_seed.as_bytes(), block),
                DataKind::Text => text_block(block_seed.as_bytes(), block),
            }
        });
    data
}

fn random_block(key: &[u8; 32], out: &mut [u8]) {
    blake3::Hasher::new_keyed(key).finalize_xof().fill(out);
}

fn text_block(key: &[u8; 32], out: &mut [u8]) {
    let mut seed = [0u8; 32];
    seed.copy_from_slice(key);
    let mut source = SourceGen::new(StdRng::from_seed(seed));
    let mut filled = 0;
    while filled < out.len() {
        let line = source.next_line();
        let n = line.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&line.as_bytes()[..n]);
        filled += n;
    }
}

/// Words that identifiers, type names and comments are made of.
const WORDS: &[&str] = &[
    "chunk",
    "offset",
    "len",
    "data",
    "buf",
    "key",
    "id",
    "store",
    "blob",
    "codec",
    "file",
    "path",
    "name",
    "size",
    "count",
    "index",
    "entry",
    "state",
    "config",
    "error",
    "result",
    "value",
    "item",
    "node",
    "tree",
    "hash",
    "seq",
    "device",
    "namespace",
    "version",
    "vector",
    "batch",
    "stream",
    "reader",
    "writer",
    "bytes",
    "header",
    "payload",
    "nonce",
    "cipher",
    "level",
    "limit",
    "max",
    "min",
    "total",
    "start",
    "end",
    "next",
    "prev",
    "local",
    "remote",
    "journal",
    "manifest",
    "conflict",
    "sync",
    "plan",
    "op",
    "event",
    "watcher",
    "timer",
    "queue",
    "cache",
    "map",
    "list",
    "set",
    "token",
    "user",
    "account",
    "session",
];

const TYPES: &[&str] = &[
    "u8",
    "u32",
    "u64",
    "usize",
    "i64",
    "bool",
    "String",
    "&str",
    "&[u8]",
    "Vec<u8>",
    "PathBuf",
    "Option<u64>",
    "Duration",
    "Instant",
];

const METHODS: &[&str] = &[
    "len",
    "is_empty",
    "clone",
    "to_vec",
    "as_bytes",
    "iter",
    "into_iter",
    "unwrap",
    "push",
    "insert",
    "get",
    "remove",
    "contains",
    "extend_from_slice",
    "as_ref",
    "to_string",
    "map_err",
    "ok_or",
    "collect",
    "finish",
];

const MACROS: &[&str] = &["assert!", "assert_eq!", "debug_assert!", "format!", "vec!"];

/// Generates plausible Rust, one line at a time: identifiers from a Zipf-like
/// vocabulary, blocks that open and close, comments, and the occasional repeated line
/// (as real code repeats itself).
struct SourceGen {
    rng: StdRng,
    idents: Vec<String>,
    type_names: Vec<String>,
    indent: usize,
    recent: Vec<String>,
}

impl SourceGen {
    fn new(mut rng: StdRng) -> Self {
        let idents = (0..200)
            .map(|_| {
                let parts = rng.gen_range(1..=3);
                (0..parts)
                    .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
                    .collect::<Vec<_>>()
                    .join("_")
            })
            .collect();
        let type_names = (0..80)
            .map(|_| {
                let parts = rng.gen_range(1..=2);
                (0..parts)
                    .map(|_| camel(WORDS[rng.gen_range(0..WORDS.len())]))
                    .collect()
            })
            .collect();
        Self {
            rng,
            idents,
            type_names,
            indent: 0,
            recent: Vec::new(),
        }
    }

    /// Index into a list of `n`, skewed towards the front (frequent names).
    fn skewed(&mut self, n: usize) -> usize {
        let x: f64 = self.rng.gen();
        ((x * x * x) * n as f64) as usize
    }

    fn ident(&mut self) -> String {
        let i = self.skewed(self.idents.len());
        self.idents[i].clone()
    }

    fn type_name(&mut self) -> String {
        if self.rng.gen_bool(0.4) {
            TYPES[self.rng.gen_range(0..TYPES.len())].to_string()
        } else {
            let i = self.skewed(self.type_names.len());
            self.type_names[i].clone()
        }
    }

    fn pick(&mut self, list: &[&'static str]) -> &'static str {
        list[self.rng.gen_range(0..list.len())]
    }

    fn number(&mut self) -> String {
        match self.rng.gen_range(0..4) {
            0 => "0".into(),
            1 => "1".into(),
            2 => self.rng.gen_range(2..64).to_string(),
            _ => self.rng.gen_range(64..100_000).to_string(),
        }
    }

    fn expr(&mut self) -> String {
        match self.rng.gen_range(0..9) {
            0 | 1 => self.ident(),
            2 => format!("{}.{}()", self.ident(), self.pick(METHODS)),
            3 => self.number(),
            4 => format!("{} + {}", self.ident(), self.number()),
            5 => format!("&{}[..{}]", self.ident(), self.ident()),
            6 => format!("{}::new({})", self.type_name(), self.ident()),
            7 => format!("\"{} {}\"", self.pick(WORDS), self.pick(WORDS)),
            _ => format!("self.{}", self.ident()),
        }
    }

    fn comment(&mut self) -> String {
        let n = self.rng.gen_range(3..12);
        let words: Vec<&str> = (0..n).map(|_| self.pick(WORDS)).collect();
        format!("// {}.", words.join(" "))
    }

    fn next_line(&mut self) -> String {
        // Real code repeats lines (closing braces aside): `?;` calls, field lists,
        // similar match arms.
        if !self.recent.is_empty() && self.rng.gen_bool(0.25) {
            let i = self.rng.gen_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        let pad = "    ".repeat(self.indent);
        let body = if self.indent == 0 {
            self.top_level()
        } else {
            self.statement()
        };
        let line = match body {
            Line::Open(s) => {
                self.indent += 1;
                format!("{pad}{s} {{\n")
            }
            Line::Close => {
                self.indent -= 1;
                format!("{}}}\n", "    ".repeat(self.indent))
            }
            Line::Plain(s) if s.is_empty() => "\n".to_string(),
            Line::Plain(s) => format!("{pad}{s}\n"),
        };
        if line.len() > 12 {
            if self.recent.len() == 64 {
                let i = self.rng.gen_range(0..64);
                self.recent[i].clone_from(&line);
            } else {
                self.recent.push(line.clone());
            }
        }
        line
    }

    fn top_level(&mut self) -> Line {
        match self.rng.gen_range(0..10) {
            0 => Line::Plain(format!(
                "use crate::{}::{};",
                self.ident(),
                self.type_name()
            )),
            1 => Line::Plain(self.comment().replacen("//", "///", 1)),
            2 => Line::Plain(String::new()),
            3 => Line::Open(format!("pub struct {}", self.type_name())),
            4 => Line::Open(format!("impl {}", self.type_name())),
            _ => Line::Open(format!(
                "pub fn {}({}: {}, {}: {}) -> Result<{}, Error>",
                self.ident(),
                self.ident(),
                self.type_name(),
                self.ident(),
                self.type_name(),
                self.type_name()
            )),
        }
    }

    fn statement(&mut self) -> Line {
        let can_open = self.indent < 5;
        match self.rng.gen_range(0..20) {
            0..=4 => {
                let mutable = if self.rng.gen_bool(0.2) { "mut " } else { "" };
                Line::Plain(format!("let {mutable}{} = {};", self.ident(), self.expr()))
            }
            5 | 6 => Line::Plain(format!(
                "{}.{}({}, {})?;",
                self.ident(),
                self.pick(METHODS),
                self.expr(),
                self.expr()
            )),
            7 if can_open => Line::Open(format!(
                "if {} {} {}",
                self.ident(),
                self.pick(&["==", "!=", "<", ">=", "&&"]),
                self.expr()
            )),
            8 if can_open => Line::Open(format!("for {} in {}.iter()", self.ident(), self.ident())),
            9 if can_open => Line::Open(format!("match {}", self.expr())),
            10 => Line::Plain(format!(
                "{}::{}({}) => {},",
                self.type_name(),
                camel(self.pick(WORDS)),
                self.ident(),
                self.expr()
            )),
            11 => Line::Plain(format!("pub {}: {},", self.ident(), self.type_name())),
            12 => Line::Plain(self.comment()),
            13 => Line::Plain(format!(
                "{}({}, {});",
                self.pick(MACROS),
                self.expr(),
                self.expr()
            )),
            14 => Line::Plain(format!("return Ok({});", self.expr())),
            15 => Line::Plain(String::new()),
            _ => Line::Close,
        }
    }
}

/// One generated line: opens a block, closes one, or neither.
enum Line {
    Open(String),
    Close,
    Plain(String),
}

fn camel(word: &str) -> String {
    let mut s = word.to_string();
    s[..1].make_ascii_uppercase();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_seeded() {
        for kind in DataKind::ALL {
            let a = generate(kind, 3 * BLOCK + 123, 1);
            assert_eq!(a.len(), 3 * BLOCK + 123);
            assert_eq!(a, generate(kind, 3 * BLOCK + 123, 1));
            assert_ne!(a, generate(kind, 3 * BLOCK + 123, 2));
        }
    }

    #[test]
    fn text_compresses_like_source_code_and_random_does_not() {
        let ratio = |kind| {
            let data = generate(kind, 4 * BLOCK, 7);
            let compressed: usize = data
                .chunks(64 * 1024)
                .map(|c| zstd::bulk::compress(c, 3).unwrap().len())
                .sum();
            data.len() as f64 / compressed as f64
        };
        let text = ratio(DataKind::Text);
        assert!((3.0..=5.0).contains(&text), "text ratio {text}");
        let random = ratio(DataKind::Random);
        assert!(random < 1.0, "random ratio {random}");
    }
}
