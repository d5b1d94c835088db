from .semantic_segmentor import SemanticSegmentor, resize_logits

__all__ = ["SemanticSegmentor", "resize_logits"]
