//! `lapidary tokenize`: ids as transformers' tokenizer gives them (BOS added).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// A Hugging Face model directory or a .gguf file, or a Hub id (see `lapidary eval --help`).
    #[arg(long, value_parser = crate::common::model_path)]
    pub model: PathBuf,
    #[arg(long)]
    pub text: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = lapidary_model::io::files::load_tokenizer(&a.model)?;
    let ids = crate::common::encode(&tok, &a.text)?;
    if a.json {
        crate::common::print_json(&json!({ "ids": ids }));
    } else {
        let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap_or_default()).collect();
        println!("{ids:?}\n{pieces:?}");
    }
    Ok(())
}
