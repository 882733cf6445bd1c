"""Fast embedders beside routerops.models.embeddings: a static (model2vec-style) table distilled from the
shipped MiniLM, and MiniLM on ONNX Runtime with int8 weights. Each lives in a folder built once by
`routerops embedder build ...` (never at import time) and is named by a hash of its files, so
caches and routers never mix two embedders."""
