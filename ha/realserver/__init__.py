"""Preparing a DR or TUN realserver (``lvs-ha realserver setup|check|undo``): ``plan`` decides from what was observed
(pure), ``host`` observes the kernel, applies the changes and keeps the record of what setup changed."""
