"""The Moshi speech LM on transformers' model definitions: checkpoint loading, the streaming step, sampling.

- `loading.load_moshi(source, device=, dtype=)`: a Kyutai-layout or Hugging Face-layout checkpoint
  (local dir or Hub repo id) -> `LoadedMoshi` (MoshiForConditionalGeneration, text tokenizer, Mimi).
- `lm.MoshiStreamingLM(model, batch_size)`: per-row streaming state and `step(user_codes, sampling)`,
  one temporal-transformer position and 8 depth-transformer steps per 80 ms frame.
- `tokenizer.TextTokenizer`: text token ids -> display text (SentencePiece or tokenizer.json).
- `sampling.sample_tokens`: per-row temperature / top-k from per-slot random draws.

The engine that ties these to the Mimi codec is `assistant.backends.moshi.MoshiEngine`.
"""
