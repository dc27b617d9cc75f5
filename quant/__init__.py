"""Weight quantization: int4 block-wise (the layout ONNX Runtime's MatMulNBits and
GatherBlockQuantized read) and the error measurements that go with it. numpy only."""
