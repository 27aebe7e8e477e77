//! The `tokenizer.*` metadata of a Gemma 1-3 GGUF, derived from a Hugging Face model directory as llama.cpp's
//! `convert_hf_to_gguf.py` derives it (`_set_vocab_sentencepiece` + gguf-py's `SpecialVocab`): a "llama"
//! (SentencePiece) vocabulary of tokens, scores and token types, the special token ids, the `add_*_token`
//! flags, the chat template, and `add_space_prefix = false`.
//!
//! The pieces come from `tokenizer.model` when the directory has one (as the converter reads them). Without it
//! the converter refuses (Gemma 1/2: no `tokenizer.model`; Gemma 3 falls to a BPE path whose pre-tokenizer it
//! does not recognise), so we read the same SentencePiece model out of `tokenizer.json`: its vocabulary in id
//! order; `<unk>` UNKNOWN, special added tokens CONTROL, `<0xNN>` BYTE, the rest NORMAL; a NORMAL piece's score
//! is `-(rank + 1)` of the first merge that makes it (llama.cpp merges the adjacent pair whose joined piece
//! scores highest, so this replays the BPE merge order), 0 for the others. `scripts/make_gguf_model_fixtures.py`
//! checks that llama.cpp tokenizes such a file as transformers does.
use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::file::GgufValue;
use crate::error::{ModelError, Result};

/// llama.cpp's `llama_token_type` (gguf-py `SentencePieceTokenTypes`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// gguf-py's `SpecialVocab` special token types, in its order, with the key each is written under.
const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

struct Piece {
    text: String,
    score: f32,
    kind: i32,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::format(path, format!("not valid JSON: {e}")))
}

/// `tokenizer.*` key/values in the converter's order, for the model directory `dir` whose `config.json` is
/// `config`. `gemma1`: the Gemma 1 converter also writes the CodeGemma EOT id (107).
pub fn tokenizer_metadata(dir: &Path, config: &Value, gemma1: bool) -> Result<Vec<(String, GgufValue)>> {
    let tj_path = dir.join("tokenizer.json");
    let tj = read_json(&tj_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json(&tc_path)?;
    let sp_path = dir.join("tokenizer.model");
    let mut pieces = if sp_path.is_file() {
        let bytes = std::fs::read(&sp_path).map_err(|e| ModelError::io(&sp_path, e))?;
        sentencepiece_pieces(&bytes).map_err(|msg| ModelError::format(&sp_path, msg))?
    } else {
        let tj = tj.as_ref().ok_or_else(|| {
            ModelError::format(dir, "no tokenizer.model and no tokenizer.json: the GGUF needs the tokenizer")
        })?;
        pieces_from_tokenizer_json(tj).map_err(|msg| ModelError::format(&tj_path, msg))?
    };
    let sp_count = pieces.len();
    let vocab_size = config.get("vocab_size").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(sp_count);
    // The converter starts from `vocab_size` unused `[PADi]` pieces and fills in the model's.
    pieces.truncate(vocab_size);
    for i in pieces.len()..vocab_size {
        pieces.push(Piece { text: format!("[PAD{i}]"), score: -10000.0, kind: UNUSED });
    }
    // added_tokens.json, then tokenizer_config.json's added_tokens_decoder (transformers 4.x) override pieces.
    if let Some(Value::Object(added)) = read_json(&dir.join("added_tokens.json"))? {
        for (text, id) in added {
            if let Some(p) = id.as_u64().and_then(|i| pieces.get_mut(i as usize)) {
                *p = Piece { text, score: -1000.0, kind: USER_DEFINED };
            }
        }
    }
    if let Some(Value::Object(dec)) = tc.as_ref().and_then(|t| t.get("added_tokens_decoder")) {
        for (id, data) in dec {
            let (Ok(id), Some(content)) = (id.parse::<usize>(), data.get("content").and_then(Value::as_str)) else {
                continue;
            };
            let Some(p) = pieces.get_mut(id) else { continue };
            let special = data.get("special").and_then(Value::as_bool).unwrap_or(false);
            *p = if special || looks_special(content) {
                Piece { text: content.to_owned(), score: -1000.0, kind: CONTROL }
            } else {
                Piece { text: content.replace('\u{2581}', " "), score: -1000.0, kind: USER_DEFINED }
            };
        }
    }

    let s = |v: &str| GgufValue::String(v.to_owned());
    let mut out: Vec<(String, GgufValue)> = vec![
        ("tokenizer.ggml.model".into(), s("llama")),
        ("tokenizer.ggml.pre".into(), s("default")),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array { item_type: 8, items: pieces.iter().map(|p| s(&p.text)).collect() },
        ),
        (
            "tokenizer.ggml.scores".into(),
            GgufValue::Array { item_type: 6, items: pieces.iter().map(|p| GgufValue::F32(p.score)).collect() },
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array { item_type: 5, items: pieces.iter().map(|p| GgufValue::I32(p.kind)).collect() },
        ),
    ];
    out.extend(special_vocab(tj.as_ref(), tc.as_ref(), config, dir, vocab_size)?);
    if gemma1 {
        out.push(("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(107)));
    }
    out.push(("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(false)));
    Ok(out)
}

/// The converter's `does_token_look_special` (the Gemma-relevant patterns).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// gguf-py's `SpecialVocab(dir, n_vocab)`: ids, then `add_*_token` flags, then the chat template.
fn special_vocab(
    tj: Option<&Value>,
    tc: Option<&Value>,
    config: &Value,
    dir: &Path,
    n_vocab: usize,
) -> Result<Vec<(String, GgufValue)>> {
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut set_id = |typ: &'static str, id: Option<u64>| {
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            if !ids.iter().any(|(t, _)| *t == typ) {
                ids.push((typ, id as u32));
            }
        }
    };
    let mut adds: Vec<(&str, bool)> = Vec::new();
    let token_str = |typ: &str| -> Option<String> {
        match tc?.get(format!("{typ}_token"))? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    };
    if let Some(tj) = tj {
        // The post-processor says whether BOS / EOS / a separator are added (Gemma: `<bos> $A`).
        let pp = tj.get("post_processor");
        let procs: Vec<&Value> = match pp.and_then(|p| p.get("processors")).and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => pp.into_iter().collect(),
        };
        for p in procs {
            if p.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
                continue;
            }
            let single = p.get("single").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut first = None;
            let mut last = None;
            if single.len() > 1 {
                first = special_id(single.first());
                if let Some(f) = first {
                    adds.push(("bos", Some(f) == token_str("bos").as_deref()));
                }
                last = special_id(single.last());
                if let Some(l) = last {
                    adds.push(("eos", Some(l) == token_str("eos").as_deref()));
                }
            }
            let pair = p.get("pair").and_then(Value::as_array).cloned().unwrap_or_default();
            let start = usize::from(first.is_some() && special_id(pair.first()) == first);
            let stop = pair.len() - usize::from(last.is_some() && special_id(pair.last()) == last);
            let mid = if start < stop { &pair[start..stop] } else { &[][..] };
            if mid.len() > 2
                && seq(mid.first()).and_then(Value::as_str) == Some("A")
                && seq(mid.last()).and_then(Value::as_str) == Some("B")
            {
                let inner = &mid[1..mid.len() - 1];
                let sep_like = |v: Option<&str>| {
                    v.is_some()
                        && (v.map(str::to_owned) == token_str("sep") || v.map(str::to_owned) == token_str("eos"))
                };
                let mut add_sep = sep_like(special_id(inner.first())) && last.is_none();
                if inner.len() == 2 && sep_like(special_id(inner.get(1))) {
                    add_sep = true;
                }
                adds.push(("sep", add_sep));
            }
        }
    }
    if let Some(tc) = tc {
        let added: Vec<&Value> = tj
            .and_then(|t| t.get("added_tokens"))
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for (typ, _) in SPECIAL_TYPES {
            if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Value::as_bool) {
                if !adds.iter().any(|(t, _)| *t == typ) {
                    adds.push((typ, b));
                }
            }
            if let Some(content) = token_str(typ) {
                let id = added
                    .iter()
                    .find(|a| a.get("content").and_then(Value::as_str) == Some(content.as_str()))
                    .and_then(|a| a.get("id"))
                    .and_then(Value::as_u64);
                set_id(typ, id);
            }
        }
    }
    for (typ, _) in SPECIAL_TYPES {
        set_id(typ, config.get(format!("{typ}_token_id")).and_then(Value::as_u64));
    }

    let mut out = Vec::new();
    for (typ, id) in ids {
        let key = SPECIAL_TYPES.iter().find(|(t, _)| *t == typ).map(|(_, k)| *k).unwrap_or("");
        out.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
    }
    // gguf-py writes add_bos / add_eos / add_sep only (it has no writer for the other types).
    for (typ, b) in adds {
        if matches!(typ, "bos" | "eos" | "sep") {
            out.push((format!("tokenizer.ggml.add_{typ}_token"), GgufValue::Bool(b)));
        }
    }
    let jinja = dir.join("chat_template.jinja");
    let template = match tc.and_then(|t| t.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        _ if jinja.is_file() => Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?),
        _ => None,
    };
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".into(), GgufValue::String(t)));
    }
    Ok(out)
}

/// A TemplateProcessing item's special token (`{"SpecialToken": {"id": ...}}`).
fn special_id(item: Option<&Value>) -> Option<&str> {
    item.and_then(|v| v.get("SpecialToken")).and_then(|v| v.get("id")).and_then(Value::as_str)
}

/// A TemplateProcessing item's sequence id (`{"Sequence": {"id": "A"}}`).
fn seq(item: Option<&Value>) -> Option<&Value> {
    item.and_then(|v| v.get("Sequence")).and_then(|v| v.get("id"))
}

/// The SentencePiece model read out of a Gemma `tokenizer.json` (see the module doc).
fn pieces_from_tokenizer_json(tj: &Value) -> std::result::Result<Vec<Piece>, String> {
    let model = tj.get("model").ok_or("no `model`")?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err("`model.type` is not BPE: not a Gemma tokenizer (add its tokenizer.model instead)".into());
    }
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or("no `model.vocab`")?;
    let mut by_id: Vec<Option<&str>> = vec![None; vocab.len()];
    for (piece, id) in vocab {
        let id = id.as_u64().ok_or_else(|| format!("vocab entry `{piece}` has no integer id"))? as usize;
        *by_id.get_mut(id).ok_or_else(|| format!("vocab id {id} of `{piece}` is not below {}", vocab.len()))? =
            Some(piece);
    }
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in model.get("merges").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let joined = match m {
            Value::String(s) => s.replacen(' ', "", 1),
            Value::Array(p) => p.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("merge #{r} is neither a string nor a pair")),
        };
        rank.entry(joined).or_insert(r);
    }
    let special: HashMap<u64, bool> = tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t.get("id")?.as_u64()?, t.get("special")?.as_bool()?)))
        .collect();
    let unk = model.get("unk_token").and_then(Value::as_str);
    by_id
        .into_iter()
        .enumerate()
        .map(|(id, piece)| {
            let text = piece.ok_or_else(|| format!("no vocab entry has id {id}"))?.to_owned();
            let is_byte = text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
            let (kind, score) = if Some(text.as_str()) == unk {
                (UNKNOWN, 0.0)
            } else if special.get(&(id as u64)) == Some(&true) {
                (CONTROL, 0.0)
            } else if is_byte {
                (BYTE, 0.0)
            } else {
                (NORMAL, rank.get(&text).map_or(0.0, |r| -((r + 1) as f32)))
            };
            Ok(Piece { text, score, kind })
        })
        .collect()
}

/// The pieces of a SentencePiece `tokenizer.model` (protobuf `ModelProto`: field 1, repeated `SentencePiece`
/// {1: piece, 2: score (float), 3: type (enum, default NORMAL)}); the other fields are skipped.
fn sentencepiece_pieces(buf: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    for (field, value) in fields(buf)? {
        if let (1, Field::Bytes(msg)) = (field, value) {
            let mut p = Piece { text: String::new(), score: 0.0, kind: NORMAL };
            for (f, v) in fields(msg)? {
                match (f, v) {
                    (1, Field::Bytes(b)) => p.text = String::from_utf8_lossy(b).into_owned(),
                    (2, Field::Fixed32(x)) => p.score = f32::from_bits(x),
                    // SentencePiece's enum: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, BYTE 6, UNUSED 5 --
                    // the same numbers as llama.cpp's token types.
                    (3, Field::Varint(t)) => p.kind = t as i32,
                    _ => {}
                }
            }
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    Ok(out)
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Fixed64,
}

/// Protobuf wire format: (field number, value) in order.
fn fields(mut b: &[u8]) -> std::result::Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                b = b.get(8..).ok_or("truncated fixed64")?;
                Field::Fixed64
            }
            2 => {
                let len = varint(&mut b)? as usize;
                let v = b.get(..len).ok_or("truncated length-delimited field")?;
                b = &b[len..];
                Field::Bytes(v)
            }
            5 => {
                let v = b.get(..4).ok_or("truncated fixed32")?;
                b = &b[4..];
                Field::Fixed32(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}
