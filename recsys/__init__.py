"""stylerec's recommendation core: data, collaborative filtering, visual taste, the facade.

Heavy dependencies (torch, faiss, open_clip) load only when their modules are used.
"""

from recsys.catalog import Catalog
from recsys.cf import MODELS, Recommender, create_model, register_model
from recsys.interactions import Interactions, load_interactions

__all__ = [
    "Catalog",
    "Interactions",
    "MODELS",
    "Recommender",
    "create_model",
    "load_interactions",
    "register_model",
]
__version__ = "0.1.0"
