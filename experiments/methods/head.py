"""The task head alone (``model.head``) on the frozen encoder: the baseline that says what a method adds."""

from experiments.methods import Method, register


@register
class Head(Method):
    name = "head"  # Method's defaults are this method: freeze all but the head, nothing adapted, no ΔW
    title = "head only"
