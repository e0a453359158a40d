"""BertConfig: the hyper-parameters of a BERT, with Hugging Face's field names.

A Hugging Face ``config.json`` of a BERT reads unchanged; options this implementation
cannot run (another activation, relative position embeddings, a decoder) are rejected with
a clear error instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

# keys a Hugging Face BERT config.json may hold that do not change the computation
_IGNORED_HF_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "gradient_checkpointing",
    "use_cache", "classifier_dropout", "_name_or_path", "output_past", "id2label", "label2id", "problem_type",
    "chunk_size_feed_forward", "tie_word_embeddings", "bos_token_id", "eos_token_id", "directionality",
    "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "finetuning_task", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "pruned_heads", "tokenizer_class", "prefix", "task_specific_params", "is_encoder_decoder",
    "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "num_labels",
}
SUPPORTED_ACTIVATIONS = ("gelu",)   # the exact erf GELU (Hugging Face's "gelu")


class ConfigError(ValueError):
    """A configuration this implementation cannot run, or a malformed config file."""


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    is_decoder: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config {name} must be a positive integer; got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                              f"({self.num_attention_heads})")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported: this BERT implements the exact "
                              f"erf GELU only (hidden_act='gelu')")
        if self.position_embedding_type != "absolute":
            raise ConfigError(f"position_embedding_type {self.position_embedding_type!r} is not supported: only "
                              f"'absolute' position embeddings are implemented")
        if self.is_decoder:
            raise ConfigError("is_decoder=True is not supported: this is an encoder-only BERT")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"config {name} must be in [0, 1); got {p}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive; got {self.layer_norm_eps}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object; got {type(d).__name__}")
        model_type = d.get("model_type", "bert")
        if model_type not in ("bert",):
            raise ConfigError(f"model_type {model_type!r} is not a BERT; this implementation loads BERT only")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        unknown = sorted(k for k in d if k not in fields and k not in _IGNORED_HF_KEYS and not k.startswith("_"))
        if unknown:
            raise ConfigError(f"config has keys this implementation does not know: {', '.join(unknown)}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_json_file(self, path):
        d = {"architectures": ["BertForPreTraining"], "model_type": "bert", **self.to_dict()}
        atomic_write(path, json.dumps(d, indent=2, sort_keys=True) + "\n")
