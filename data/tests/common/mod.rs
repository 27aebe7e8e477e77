#![allow(dead_code)]
use std::path::PathBuf;

use lapidary_data::{load_tokenizer, EncodeConfig, Encoder, SpecialTokens};
use tokenizers::Tokenizer;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn data(name: &str) -> PathBuf {
    fixtures().join("data").join(name)
}

pub fn tokenizer() -> Tokenizer {
    load_tokenizer(&fixtures().join("tiny/tokenizer.json")).expect("tiny tokenizer")
}

pub fn encoder(max_seq_len: usize, completion_only: bool) -> Encoder {
    let tok = tokenizer();
    let special = SpecialTokens::from_tokenizer(&tok).unwrap();
    Encoder::new(tok, special, EncodeConfig { max_seq_len, completion_only }).unwrap()
}

/// Ids of `text` tokenized alone, no special tokens added.
pub fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).unwrap().get_ids().to_vec()
}

/// The same every source of the reference rows must give.
pub const SOURCES: &[&str] =
    &["rows.jsonl", "rows.parquet", "rows_shards", "rows.arrow", "rows.stream.arrow", "rows_disk"];
