"""BERT models with hand-written forward and backward passes (Hugging Face's class and parameter names)."""
from .bert import (BertForPreTraining, BertForSequenceClassification, BertModel, BertModelOutput,  # noqa: F401
                   PreTrainingOutput, SequenceClassifierOutput)
from .task_models import (BertForMaskedLM, BertForMultipleChoice, BertForQuestionAnswering,  # noqa: F401
                          BertForTokenClassification, MaskedLMOutput, MultipleChoiceOutput, QuestionAnsweringOutput,
                          TokenClassifierOutput)
