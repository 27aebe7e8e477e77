//! Samples to token ids and labels.
//!
//! Every example starts with one BOS id (transformers adds it through the tokenizer's post-processor, and
//! the chat template writes it as text; either way there is exactly one), then the sample's parts, each
//! tokenized *on its own* with `add_special_tokens = false`, then EOS where the format has one:
//!
//! | format              | ids                                              | labels (completion_only)            |
//! |---------------------|--------------------------------------------------|-------------------------------------|
//! | text                | bos, text, eos                                   | all but position 0                  |
//! | prompt_completion   | bos, prompt, completion, eos                     | completion, eos                     |
//! | alpaca              | bos, alpaca prompt(instruction, input), output, eos | output, eos                      |
//! | messages            | bos, rendered template pieces                     | model content + end-of-turn marker (all turns, or the last with `TrainOn::LastTurn`) |
//! | tokens              | input_ids as given (no bos/eos added)            | `labels`, or input_ids              |
//!
//! `labels[0]` is always [`IGNORE_INDEX`]: labels are aligned with `input_ids` and the model shifts them
//! (position t predicts `labels[t + 1]`), so nothing ever predicts position 0, and masking it makes an
//! example's first token safe to pack right after another example's last one.
//!
//! **Why the parts are tokenized separately.** Concatenating the ids of separately tokenized parts puts the
//! mask boundary exactly between prompt and answer tokens. Tokenizing the whole string instead (what
//! `apply_chat_template(tokenize=True)` or `tokenizer(prompt + completion)` do) gives the same ids whenever
//! no token spans a boundary. For chat rows every boundary sits next to a special token (`<end_of_turn>`,
//! whose added-token split happens before the model sees the text) or right after the `\n` that ends
//! `<start_of_turn>model\n`, followed by stripped (non-blank) content; Gemma's vocabulary has no token that
//! joins a `\n` to following text, so chat ids equal the whole-string ids (the tests check this against the
//! tokenizers crate). For prompt/completion and alpaca rows the boundary is wherever the data puts it; the
//! ids differ from whole-string tokenization only where the tokenizer would merge across it, e.g. a prompt
//! ending in a space before a completion starting with a word (`"A: " + "yes"` gives `▁` + `yes` here,
//! `▁yes` for the whole string). Put the separating space at the start of the completion (`"A:" + " yes"`),
//! as TRL advises too: Gemma's pieces begin with `▁`, so both ways then agree.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::chat::{chat_pieces, Piece, END_OF_TURN, START_OF_TURN};
use crate::error::{DataError, Location, Result};
use crate::format::{Message, Sample, IGNORE_INDEX};
use crate::template::ChatTemplate;

/// Ids of the tokens the encoder and the batcher need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
}

impl SpecialTokens {
    /// Looks up Gemma's `<bos>`, `<eos>` and `<pad>` (for pad, the tokenizer's padding settings win if set).
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| DataError::Tokenizer(format!("no `{t}` token in the vocabulary; set its id explicitly")))
        };
        let pad = match tokenizer.get_padding() {
            Some(p) => p.pad_id,
            None => id("<pad>")?,
        };
        Ok(Self { bos: id("<bos>")?, eos: id("<eos>")?, pad })
    }
}

/// Loads a `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
}

/// One training example: ids and labels of equal length, labels aligned with ids (not shifted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Target ids, [`IGNORE_INDEX`] where no loss is taken.
    pub labels: Vec<i64>,
    /// The example was longer than `max_seq_len` and its tail was cut.
    pub truncated: bool,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Positions that contribute to the loss.
    pub fn n_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Which model turns of a chat row are trained when answers only are (`data.train_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Every assistant turn (TRL's `assistant_only_loss`, Axolotl's `roles_to_train: ["assistant"]`).
    #[default]
    AllAssistant,
    /// Only the conversation's last assistant turn; earlier ones are context.
    LastTurn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeConfig {
    /// Longest example kept; longer ones are cut to this length and counted as truncated.
    pub max_seq_len: usize,
    /// Train only on answers (completion, alpaca output, model turns); otherwise on every token but the first.
    pub completion_only: bool,
}

/// Tokenizes samples into examples.
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    config: EncodeConfig,
    has_turn_tokens: bool,
    /// The checkpoint's chat template; `None`: the hand-written Gemma template of [`crate::chat`].
    template: Option<ChatTemplate>,
    train_on: TrainOn,
}

impl Encoder {
    pub fn new(tokenizer: Tokenizer, special: SpecialTokens, config: EncodeConfig) -> Result<Self> {
        if config.max_seq_len < 2 {
            return Err(DataError::Config(format!("max_seq_len must be at least 2, got {}", config.max_seq_len)));
        }
        let has_turn_tokens =
            tokenizer.token_to_id(START_OF_TURN).is_some() && tokenizer.token_to_id(END_OF_TURN).is_some();
        Ok(Self { tokenizer, special, config, has_turn_tokens, template: None, train_on: TrainOn::AllAssistant })
    }

    /// Which model turns a chat row trains when `completion_only` (all of them by default).
    pub fn with_train_on(mut self, train_on: TrainOn) -> Self {
        self.train_on = train_on;
        self
    }

    /// Renders `messages` rows with `template` (a checkpoint's, [`ChatTemplate::for_model`]) instead of the
    /// hand-written Gemma template; `None` keeps the hand-written one.
    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> Self {
        self.template = template;
        self
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    pub fn config(&self) -> EncodeConfig {
        self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes one sample; `loc` names the row in errors.
    pub fn encode(&self, sample: &Sample, loc: &Location) -> Result<Example> {
        let mut b = Builder::new(self.special.bos);
        let train_prompt = !self.config.completion_only;
        match sample {
            Sample::Text(text) => {
                self.push(&mut b, text, true, loc)?;
                b.push_ids(&[self.special.eos], true);
            }
            Sample::PromptCompletion { prompt, completion } => {
                self.push(&mut b, prompt, train_prompt, loc)?;
                self.push(&mut b, completion, true, loc)?;
                b.push_ids(&[self.special.eos], true);
            }
            Sample::Alpaca { instruction, input, output } => {
                self.push(&mut b, &alpaca_prompt(instruction, input.as_deref()), train_prompt, loc)?;
                self.push(&mut b, output, true, loc)?;
                b.push_ids(&[self.special.eos], true);
            }
            // Everything trained: the whole rendering, which needs no prefix-stable template.
            Sample::Messages(messages) if train_prompt && self.template.is_some() => {
                let t = self.template.as_ref().expect("checked by the guard");
                let text = t.render(messages, false).map_err(|source| DataError::Chat { loc: loc.clone(), source })?;
                self.push(&mut b, t.without_bos(&text), true, loc)?;
            }
            Sample::Messages(messages) => {
                let pieces = self.pieces(messages, false, loc)?;
                // A trained piece is one model turn (content and end-of-turn marker; untrained text in between).
                let last = pieces.iter().rposition(|p| p.trained);
                for (i, piece) in pieces.iter().enumerate() {
                    let turn = piece.trained && (self.train_on == TrainOn::AllAssistant || Some(i) == last);
                    self.push(&mut b, &piece.text, turn || train_prompt, loc)?;
                }
            }
            Sample::Tokens { input_ids, labels } => {
                b.ids = input_ids.clone();
                b.labels = match labels {
                    Some(l) => l.clone(),
                    None => input_ids.iter().map(|&t| t as i64).collect(),
                };
                if let Some(first) = b.labels.first_mut() {
                    *first = IGNORE_INDEX;
                }
            }
        }
        Ok(b.finish(self.config.max_seq_len))
    }

    /// The ids of a conversation's prompt for generation: `<bos>` + the rendered turns + the generation prompt
    /// (`<start_of_turn>model\n`), as `apply_chat_template(add_generation_prompt=True, tokenize=True)` gives.
    pub fn encode_chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let loc = Location::line(Path::new("<prompt>"), 1);
        let mut b = Builder::new(self.special.bos);
        for piece in self.pieces(messages, true, &loc)? {
            self.push(&mut b, &piece.text, false, &loc)?;
        }
        Ok(b.ids)
    }

    fn pieces(&self, messages: &[Message], generation: bool, loc: &Location) -> Result<Vec<Piece>> {
        if let Some(t) = &self.template {
            return t.pieces(messages, generation).map_err(|source| DataError::Chat { loc: loc.clone(), source });
        }
        if !self.has_turn_tokens {
            return Err(DataError::Tokenizer(format!(
                "no `{START_OF_TURN}`/`{END_OF_TURN}` tokens, cannot encode `messages` rows (first at {loc})"
            )));
        }
        chat_pieces(messages, generation).map_err(|source| DataError::Chat { loc: loc.clone(), source })
    }

    fn push(&self, b: &mut Builder, text: &str, trained: bool, loc: &Location) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| DataError::Encode { loc: loc.clone(), message: e.to_string() })?;
        b.push_ids(enc.get_ids(), trained);
        Ok(())
    }
}

/// The Stanford Alpaca prompt (with and without an input), which `output` completes.
pub fn alpaca_prompt(instruction: &str, input: Option<&str>) -> String {
    match input {
        Some(input) if !input.is_empty() => format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. \
             Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        _ => format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    }
}

struct Builder {
    ids: Vec<u32>,
    labels: Vec<i64>,
}

impl Builder {
    fn new(bos: u32) -> Self {
        Self { ids: vec![bos], labels: vec![IGNORE_INDEX] }
    }

    fn push_ids(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        if trained {
            self.labels.extend(ids.iter().map(|&t| t as i64));
        } else {
            self.labels.extend(std::iter::repeat_n(IGNORE_INDEX, ids.len()));
        }
    }

    fn finish(mut self, max_len: usize) -> Example {
        let truncated = self.ids.len() > max_len;
        self.ids.truncate(max_len);
        self.labels.truncate(max_len);
        Example { input_ids: self.ids, labels: self.labels, truncated }
    }
}
