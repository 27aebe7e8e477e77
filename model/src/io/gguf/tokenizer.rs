//! A `tokenizers::Tokenizer` rebuilt from a GGUF file's `tokenizer.ggml.*` metadata, giving the same ids as
//! transformers' tokenizer for that file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).
//!
//! transformers (5.x, `integrations/gguf/gguf_tokenizer_mapping.py`, `gemma_tokenizer`) builds Gemma GGUF
//! tokenizers (`tokenizer.ggml.model == "llama"`, architecture gemma/gemma2/gemma3) as follows, and so do we:
//! * Vocabulary: the file's tokens by index, except that tokens made only of two or more spaces (stored as
//!   real spaces, e.g. `"  "`) are respelled with `▁` (`"▁▁"`), as the BPE model sees spaces as `▁`.
//! * Merges: the file has none, so they are derived from the vocabulary (`generate_merges`): every split of a
//!   token into two vocabulary tokens is a merge; merges are ranked by the position of the merged token in the
//!   file (earlier first — Gemma's scores do not follow merge order), then by longer left part first.
//! * Model: BPE, `byte_fallback`, `fuse_unk`, unk `<unk>`; normalizer `Replace(" ", "▁")`; pre-tokenizer
//!   `Split(" ", merged_with_previous)`; decoder `Replace("▁", " ") + ByteFallback + Fuse`. No prefix space.
//! * Added tokens: every CONTROL token (type 3) as a special token, every USER_DEFINED token (type 4) as a
//!   plain added token, all matched whole in the raw text (`normalized: false`). Quirk copied on purpose:
//!   user-defined tokens are looked up under their *file* spelling, so the respelled space-run tokens
//!   (`"  "`...) are not added tokens (they are reached through BPE merges of `▁` instead).
//! * Post-processor: `<bos> $A` when `tokenizer.ggml.add_bos_token` (default true for "llama" vocabularies),
//!   `$A <eos>` appended when `add_eos_token`.
//!
//! Gemma 4 files (`tokenizer.ggml.model == "gemma4"`, written from the checkpoint's `tokenizer.json` with its
//! merges) are built as transformers builds them (`GGUF_TOKENIZER_TYPES["gemma4"]`: the same GemmaTokenizer
//! from the file's vocabulary as spelled and its `tokenizer.ggml.merges`), with the same added tokens, and
//! without BOS whatever `add_bos_token` says: transformers follows the reference tokenizer, whose chat
//! template writes `<bos>` itself (llama.cpp adds one).
use rustc_hash::{FxHashMap, FxHashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};
use crate::io::gguf::file::GgufFile;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

fn tok_err(file: &GgufFile, msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer { path: file.path().to_path_buf(), msg: msg.into() }
}

/// The respelling transformers applies to Gemma vocabularies: a token of only spaces (two or more... any that
/// contains a space and is blank) becomes the same number of `▁`.
pub(crate) fn respell(token: &str) -> String {
    if token.contains(' ') && token.trim().is_empty() {
        "\u{2581}".repeat(token.chars().count())
    } else {
        token.to_owned()
    }
}

/// transformers' `generate_merges(vocab, vocab_scores)` with `vocab = {token: index}` and
/// `vocab_scores = {token: -index}` (file order), reproduced exactly (including Python's dict semantics for
/// duplicate tokens: first position kept for iteration, last index kept as value).
pub fn merges_from_vocab_order(tokens: &[String]) -> Vec<(String, String)> {
    // token -> last index
    let mut vocab: FxHashMap<&str, usize> = FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.as_str(), i);
    }
    // score = -(index of the merged token); lengths in chars, as Python's len()
    struct M {
        score: i64,
        l: u32,
        r: u32,
        len_l: u32,
        len_r: u32,
    }
    let mut seen: FxHashSet<&str> = FxHashSet::with_capacity_and_hasher(tokens.len(), Default::default());
    let mut merges: Vec<M> = Vec::new();
    let mut local: Vec<M> = Vec::new();
    for t in tokens {
        if !seen.insert(t.as_str()) {
            continue; // a dict iterates each key once, at its first position
        }
        let score = -(vocab[t.as_str()] as i64);
        local.clear();
        let n_chars = t.chars().count() as u32;
        for (k, (byte_idx, _)) in t.char_indices().enumerate().skip(1) {
            let (l, r) = t.split_at(byte_idx);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                let len_l = k as u32;
                local.push(M { score, l: li as u32, r: ri as u32, len_l, len_r: n_chars - len_l });
            }
        }
        local.sort_by_key(|m| (m.l, m.r));
        merges.append(&mut local);
    }
    // sorted(key=(score, len(l), len(r)), reverse=True): descending, stable.
    merges.sort_by_key(|m| std::cmp::Reverse((m.score, m.len_l, m.len_r)));
    merges.into_iter().map(|m| (tokens[m.l as usize].clone(), tokens[m.r as usize].clone())).collect()
}

/// `tokenizer.ggml.merges` ("left right" each), as transformers splits them.
fn file_merges(file: &GgufFile) -> Result<Vec<(String, String)>> {
    let key = "tokenizer.ggml.merges";
    let merges = file.get_str_array(key)?.ok_or_else(|| tok_err(file, format!("no {key}")))?;
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split(' ').collect::<Vec<_>>()[..] {
            [l, r] => Ok((l.to_owned(), r.to_owned())),
            _ => Err(tok_err(file, format!("{key}[{i}] = {m:?} is not two tokens separated by one space"))),
        })
        .collect()
}

/// Build the tokenizer transformers would build for this GGUF.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = file.get_str("tokenizer.ggml.model")?.ok_or_else(|| tok_err(file, "no tokenizer.ggml.model"))?;
    let arch = file.architecture()?;
    let gemma4 = model == "gemma4" && arch == "gemma4";
    if !gemma4 && (model != "llama" || !matches!(arch, "gemma" | "gemma2" | "gemma3")) {
        return Err(tok_err(
            file,
            format!(
                "tokenizer.ggml.model `{model}` for architecture `{arch}` is not supported \
                 (only Gemma's sentencepiece-style \"llama\" vocabulary of gemma, gemma2, gemma3, and \
                 the \"gemma4\" vocabulary of gemma4)"
            ),
        ));
    }
    let raw_tokens: Vec<&str> =
        file.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| tok_err(file, "no tokenizer.ggml.tokens"))?;
    if raw_tokens.is_empty() || raw_tokens.len() > u32::MAX as usize {
        return Err(tok_err(file, format!("tokenizer.ggml.tokens has {} entries", raw_tokens.len())));
    }
    let types: Option<Vec<i64>> = file.get_i64_array("tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != raw_tokens.len() {
            return Err(tok_err(
                file,
                format!("tokenizer.ggml.token_type has {} entries for {} tokens", t.len(), raw_tokens.len()),
            ));
        }
    }
    let id_of = |key: &str| -> Result<Option<u32>> {
        let full = format!("tokenizer.ggml.{key}");
        match file.get_u32(&full)? {
            Some(id) if (id as usize) < raw_tokens.len() => Ok(Some(id)),
            Some(id) => Err(tok_err(file, format!("{full} = {id} is outside the {} tokens", raw_tokens.len()))),
            None => Ok(None),
        }
    };
    let bos = id_of("bos_token_id")?;
    let eos = id_of("eos_token_id")?;
    let unk = id_of("unknown_token_id")?;
    let pad = id_of("padding_token_id")?;
    // Older files have no flag, and llama.cpp (and transformers) add BOS to a "llama" vocabulary then. Gemma 4:
    // never (see the module doc).
    let add_bos = !gemma4 && file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
    let add_eos = file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let tokens: Vec<String> = raw_tokens.iter().map(|t| if gemma4 { (*t).to_owned() } else { respell(t) }).collect();
    let mut vocab: Vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32); // last index wins, as in a Python dict
    }
    let merges = if gemma4 { file_merges(file)? } else { merges_from_vocab_order(&tokens) };

    // GemmaTokenizer's BPE: unk "<unk>" (its default, not the file's), byte fallback, fused unknowns.
    let mut builder = BPE::builder().vocab_and_merges(vocab.clone(), merges).fuse_unk(true).byte_fallback(true);
    let unk_str = "<unk>".to_string();
    if vocab.contains_key(&unk_str) {
        builder = builder.unk_token(unk_str);
    }
    let bpe = builder.build().map_err(|e| tok_err(file, format!("building the BPE model: {e}")))?;

    let mut tk = Tokenizer::new(bpe);
    let normalizer = Replace::new(" ", "\u{2581}").map_err(|e| tok_err(file, e.to_string()))?;
    tk.with_normalizer(Some(normalizer));
    let split = Split::new(SplitPattern::String(" ".into()), SplitDelimiterBehavior::MergedWithPrevious, false)
        .map_err(|e| tok_err(file, e.to_string()))?;
    tk.with_pre_tokenizer(Some(split));
    let dec_replace = Replace::new("\u{2581}", " ").map_err(|e| tok_err(file, e.to_string()))?;
    tk.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(dec_replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));

    // Special tokens: the file's CONTROL tokens, plus the ones transformers registers as special attributes
    // (bos/eos/unk/pad by id; `<mask>`, GemmaTokenizer's default mask token, when the vocabulary has it).
    let mut special: Vec<AddedToken> = Vec::new();
    let mut user: Vec<AddedToken> = Vec::new();
    let mut is_special = vec![false; raw_tokens.len()];
    if let Some(types) = &types {
        for (i, &ty) in types.iter().enumerate() {
            if ty == token_type::CONTROL {
                is_special[i] = true;
            }
        }
    }
    for id in [bos, eos, unk, pad].into_iter().flatten() {
        is_special[id as usize] = true;
    }
    if let Some(&mask) = vocab.get("<mask>") {
        is_special[mask as usize] = true;
    }
    for (i, &sp) in is_special.iter().enumerate() {
        if sp {
            special.push(AddedToken::from(tokens[i].clone(), true).normalized(false));
        }
    }
    if let Some(types) = &types {
        for (i, &ty) in types.iter().enumerate() {
            // Looked up under the file's spelling: respelled space runs are not in the vocabulary that way.
            if ty == token_type::USER_DEFINED && !is_special[i] && vocab.contains_key(raw_tokens[i]) {
                user.push(AddedToken::from(raw_tokens[i].to_owned(), false).normalized(false));
            }
        }
    }
    tk.add_special_tokens(&special);
    tk.add_tokens(&user);

    // Post-processor as transformers' TokenizersBackend.update_post_processor writes it.
    let bos_tok = bos.map(|i| tokens[i as usize].clone());
    let eos_tok = eos.map(|i| tokens[i as usize].clone());
    let mut single = String::new();
    let mut pair = String::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    if add_bos {
        let b = bos_tok.clone().ok_or_else(|| tok_err(file, "add_bos_token is set but there is no bos_token_id"))?;
        single.push_str(&format!("{b}:0 "));
        specials.push((b, bos.unwrap()));
    }
    single.push_str("$A:0");
    if add_eos {
        let e = eos_tok.clone().ok_or_else(|| tok_err(file, "add_eos_token is set but there is no eos_token_id"))?;
        single.push_str(&format!(" {e}:0"));
        if !specials.iter().any(|(s, _)| *s == e) {
            specials.push((e, eos.unwrap()));
        }
    }
    pair.push_str(&single);
    if add_bos {
        pair.push_str(&format!(" {}:1", bos_tok.as_ref().unwrap()));
    }
    pair.push_str(" $B:1");
    if add_eos {
        pair.push_str(&format!(" {}:1", eos_tok.as_ref().unwrap()));
    }
    let template = TemplateProcessing::builder()
        .try_single(single.as_str())
        .map_err(|e| tok_err(file, format!("template `{single}`: {e}")))?
        .try_pair(pair.as_str())
        .map_err(|e| tok_err(file, format!("template `{pair}`: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| tok_err(file, format!("post-processor: {e}")))?;
    tk.with_post_processor(Some(template));
    Ok(tk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn respell_only_blank_space_runs() {
        assert_eq!(respell("  "), "\u{2581}\u{2581}");
        assert_eq!(respell(" "), "\u{2581}");
        assert_eq!(respell("\n"), "\n");
        assert_eq!(respell(" a"), " a");
        assert_eq!(respell(" \t"), "\u{2581}\u{2581}");
    }

    #[test]
    fn merges_follow_python_generate_merges() {
        // Python: generate_merges({t: i}, {t: -i}) on this vocabulary gives (checked by hand):
        // "ab" (idx 3) -> (a, b); "abc" (idx 4) -> (ab, c) [len_l 2] before (a, bc) [len_l 1]; "bc" (idx 5).
        let toks = s(&["a", "b", "c", "ab", "abc", "bc"]);
        let m = merges_from_vocab_order(&toks);
        let want: Vec<(String, String)> = vec![
            ("a".into(), "b".into()),
            ("ab".into(), "c".into()),
            ("a".into(), "bc".into()),
            ("b".into(), "c".into()),
        ];
        assert_eq!(m, want);
    }
}
