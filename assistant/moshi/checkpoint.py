"""What a Moshi checkpoint is made of: Kyutai's file names, the stream layout, the text pad ids,
and the one error loading raises."""

KYUTAI_MOSHI_NAME = "model.safetensors"
KYUTAI_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
KYUTAI_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
DEFAULT_DELAYS = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
TEXT_PAD_ID = 3  # Kyutai's `existing_text_padding_id`
TEXT_END_PAD_ID = 0  # marks the last padding step before a word


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing file, unknown layout, mismatched shapes."""
