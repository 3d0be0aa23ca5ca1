"""stylerec's recommendation core: data, collaborative filtering, visual taste, the facade.

Heavy dependencies (torch, faiss, open_clip) load only when their modules are used.
"""

from recsys.catalog import Catalog
from recsys.cf import CF_MODELS, Recommender, create_model, register_model
from recsys.interactions import Interactions, load_interactions

_LAZY = {  # name -> module; imported on first use (torch, faiss)
    "StyleRecommender": "recsys.recommender",
    "Slate": "recsys.recommender",
    "create_encoder": "recsys.encoders",
    "EmbeddingStore": "recsys.embedding_store",
    "StyleIndex": "recsys.style_index",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


__all__ = [
    "Catalog",
    "EmbeddingStore",
    "Slate",
    "StyleIndex",
    "StyleRecommender",
    "create_encoder",
    "Interactions",
    "CF_MODELS",
    "Recommender",
    "create_model",
    "load_interactions",
    "register_model",
]
__version__ = "0.1.0"
