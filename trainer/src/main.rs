//! `lapidary`: QLoRA fine-tuning, evaluation, generation and conversion for Gemma models.
//!
//! Every subcommand validates its arguments, runs, and on failure prints one `error:` message naming the
//! file, line, key or tensor at fault and exits with status 1 (2 for command-line usage errors, from clap).
//!
//! The modules, each depending only on those below it (no module imports one that imports it back):
//!
//! - `cmd`: one file per subcommand: its arguments, checks and output; nothing outside `cmd` imports it.
//! - `train`: fine-tuning a LoRA adapter from a recipe (the loop, the optimizer, checkpoints, metrics).
//! - `eval`: what `lapidary eval`, `lapidary merge`'s check and the trainer measure (loss, exact_match,
//!   choice) and the eval rows they read.
//! - `common`: what several subcommands share: model arguments and loading, the backend and `dispatch!`,
//!   tokenizing, JSON output.
use clap::{Parser, Subcommand};

mod cmd;
mod common;
mod eval;
mod train;

#[derive(Parser)]
#[command(name = "lapidary", version, about = "QLoRA fine-tuning toolkit for Gemma models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Loss/perplexity, or exact-match / multiple-choice accuracy, of a model on a JSONL file.
    Eval(cmd::eval::EvalArgs),
    /// Generate text from a prompt.
    Generate(cmd::generate::GenerateArgs),
    /// Token ids of a text, BOS added as transformers does.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// A GGUF model as a transformers-loadable directory, a model as a GGUF llama.cpp runs (--out X.gguf), or a
    /// PEFT adapter as llama.cpp's GGUF LoRA adapter.
    Convert(cmd::convert::ConvertArgs),
    /// Architecture, parameter counts and resident bytes per component.
    Inspect(cmd::inspect::InspectArgs),
    /// Fine-tune a LoRA adapter from a TOML recipe (see configs/).
    Train(cmd::train::TrainArgs),
    /// Fold LoRA adapter(s) into the base and write a transformers-loadable directory or a GGUF (--out X.gguf).
    Merge(cmd::merge::MergeArgs),
    /// Time QLoRA training steps (tokens/s, peak memory) on a checkpoint or a published shape.
    Bench(cmd::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(a) => cmd::eval::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
