"""Pure steps of the streaming stages: bytes in, documents and rejections out, no I/O."""
