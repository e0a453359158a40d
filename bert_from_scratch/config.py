"""BertConfig: the hyper-parameters of a BERT, with Hugging Face's field names.

A Hugging Face ``config.json`` of a BERT reads unchanged; options this implementation
cannot run (another activation, relative position embeddings, a decoder) are rejected with
a clear error instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
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
    "classifier_pooling",   # ours: what a sequence classifier reads (model/heads.py); read by checkpoint.py
}
SUPPORTED_ACTIVATIONS = ("gelu",)   # the exact erf GELU (Hugging Face's "gelu")
_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size")
#: a config whose model would have more parameters than this is refused (BERT-large has 3.4e8): an edited
#: config.json with a huge size fails with a clear line instead of a MemoryError or a machine swapping
MAX_PARAMETERS = 2 ** 32


def _is_real(value) -> bool:
    """A real number that is not a bool (JSON true/false must not pass for 1/0)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value) -> str:
    """A value for an error message: its repr (JSON null shows as None), cut short, with its type."""
    try:
        text = repr(value)
    except ValueError:                      # an int past Python's 4,300-digit str() limit
        text = f"<an integer of {value.bit_length()} bits>"
    if len(text) > 60:
        text = text[:57] + "..."
    return text if value is None or _is_real(value) else f"{text} ({type(value).__name__})"


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
        """Check every field for type and range; a :class:`ConfigError` names the field, the value and
        what is allowed (a ``config.json`` edited by hand fails here, not deep inside NumPy)."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config {name} must be a positive integer; got {_show(value)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({_show(self.hidden_size)}) must be a multiple of num_attention_heads "
                              f"({_show(self.num_attention_heads)})")
        if not isinstance(self.hidden_act, str):
            raise ConfigError(f"config hidden_act must be a string ('gelu'); got {_show(self.hidden_act)}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported: this BERT implements the exact "
                              f"erf GELU only (hidden_act='gelu')")
        if not isinstance(self.position_embedding_type, str):
            raise ConfigError(f"config position_embedding_type must be the string 'absolute'; got "
                              f"{_show(self.position_embedding_type)}")
        if self.position_embedding_type != "absolute":
            raise ConfigError(f"position_embedding_type {self.position_embedding_type!r} is not supported: only "
                              f"'absolute' position embeddings are implemented")
        if not isinstance(self.is_decoder, bool):
            raise ConfigError(f"config is_decoder must be true or false; got {_show(self.is_decoder)}")
        if self.is_decoder:
            raise ConfigError("is_decoder=True is not supported: this is an encoder-only BERT")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not _is_real(p):
                raise ConfigError(f"config {name} must be a number in [0, 1); got {_show(p)}")
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"config {name} must be in [0, 1); got {p}")
        if not _is_real(self.initializer_range) or not 0.0 < self.initializer_range < math.inf:
            raise ConfigError(f"config initializer_range must be a positive finite number (the standard deviation "
                              f"of the initial weights, e.g. 0.02); got {_show(self.initializer_range)}")
        if not _is_real(self.layer_norm_eps) or math.isnan(self.layer_norm_eps):
            raise ConfigError(f"config layer_norm_eps must be a positive finite number (e.g. 1e-12); got "
                              f"{_show(self.layer_norm_eps)}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive; got {self.layer_norm_eps}")
        if math.isinf(self.layer_norm_eps):
            raise ConfigError(f"config layer_norm_eps must be a positive finite number (e.g. 1e-12); got "
                              f"{self.layer_norm_eps}")
        pad = self.pad_token_id
        if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.vocab_size:
            raise ConfigError(f"config pad_token_id must be an integer in [0, vocab_size={self.vocab_size}); "
                              f"got {_show(pad)}")
        n = self.num_parameters()
        if n > MAX_PARAMETERS:
            sizes = ", ".join(f"{k} {_show(getattr(self, k))}" for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings",
                "type_vocab_size"))
            approx = f"{n:.3g}" if n < 10 ** 300 else "more than 1e300"
            raise ConfigError(f"config describes a model of {approx} parameters ({sizes}); more than "
                              f"{MAX_PARAMETERS:,} is refused")

    def num_parameters(self) -> int:
        """The parameter count of a ``BertForPreTraining`` with this config (encoder, pooler, MLM/NSP heads)."""
        H, I, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * H + 2 * H
        layer = 4 * (H * H + H) + 2 * H * I + I + H + 4 * H             # Q K V O, FFN in/out, 2 LayerNorms
        heads = (H * H + H) + (H * H + 3 * H) + self.vocab_size + (2 * H + 2)   # pooler, MLM transform+bias, NSP
        return embeddings + L * layer + heads

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
        unknown = sorted(str(k) for k in d
                         if k not in fields and k not in _IGNORED_HF_KEYS and not str(k).startswith("_"))
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
        except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_json_file(self, path):
        d = {"architectures": ["BertForPreTraining"], "model_type": "bert", **self.to_dict()}
        atomic_write(path, json.dumps(d, indent=2, sort_keys=True) + "\n")
