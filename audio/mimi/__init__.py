"""The streaming Mimi codec (`audio.mimi.codec.StreamingMimi`), split by concern:

- `kernels`: CPU matmul kernels (oneDNN-packed weights, convolutions as im2col + one matmul);
- `layers`: streaming SEANet convolutions, transposed convolutions and resnet blocks;
- `transformer`: the transformer with a per-row ring-buffer KV cache;
- `quantizer`: the split residual vector quantizer;
- `codec`: `StreamingMimi`, encode / decode of one 80 ms frame for B rows;
- `loading`: finding and loading checkpoints (local, Hugging Face Hub, Kyutai's file);
- `convert`: Kyutai's checkpoint layout -> transformers' `MimiModel` layout.
"""
