//! `lapidary inspect`: what the model is and where its memory goes.
use anyhow::Result;
use clap::Args;
use lapidary_model::gemma::linears;
use lapidary_model::GemmaBackend;
use serde_json::json;

use crate::common::{load, ModelArgs};

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub json: bool,
}

fn run_on<B: GemmaBackend>(a: InspectArgs) -> Result<()> {
    let loaded = load::<B>(&a.model)?;
    let m = &loaded.model;
    let c = &m.config;
    let embed = c.vocab_size * c.hidden_size;
    let norms: usize = m
        .layers
        .iter()
        .map(|l| {
            let qk = l.self_attn.q_norm.as_ref().map_or(0, |_| 2 * c.head_dim);
            let n = 2 + l.pre_feedforward_layernorm.iter().count() + l.post_feedforward_layernorm.iter().count();
            n * c.hidden_size + qk
        })
        .sum::<usize>()
        + c.hidden_size;
    let (mut lin_params, mut lin_bytes, mut lora_params) = (0usize, 0usize, 0usize);
    for (_, l) in linears(m) {
        let [o, i] = l.base.shape();
        lin_params += o * i;
        lin_bytes += l.base.resident_bytes();
        if let Some(ad) = &l.adapter {
            lora_params += ad.a.shape().num_elements() + ad.b.shape().num_elements();
        }
    }
    let total = embed + norms + lin_params;
    let embed_bytes = m.embed_tokens.resident_bytes();
    let layer_types: Vec<&str> =
        c.layer_types.iter().map(|t| if *t == lapidary_model::LayerType::Full { "full" } else { "sliding" }).collect();
    let v = json!({
        "model_type": c.arch.model_type(),
        "layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "vocab_size": c.vocab_size, "sliding_window": c.sliding_window, "layer_types": layer_types,
        "attn_logit_softcapping": c.attn_logit_softcapping, "final_logit_softcapping": c.final_logit_softcapping,
        "quant": format!("{:?}", a.model.quant()).to_lowercase(),
        "parameters": { "total": total, "embedding": embed, "norms": norms, "linear": lin_params, "lora": lora_params },
        "resident_bytes": { "embedding": embed_bytes, "norms": norms * 4, "linear": lin_bytes, "lora": lora_params * 4,
                            "total": embed_bytes + norms * 4 + lin_bytes + lora_params * 4 },
    });
    if a.json {
        crate::common::print_json(&v);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

pub fn run(a: InspectArgs) -> Result<()> {
    crate::common::dispatch!(a.model.backend, run_on, a)
}
