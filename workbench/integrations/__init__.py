"""Thin adapters from training frameworks to ``workbench.watch``.

* lightning.py     ``WorkbenchCallback`` for Lightning 2.x (``pip install 'torch-workbench[lightning]'``).
* transformers.py  ``WorkbenchCallback`` for the Hugging Face ``Trainer`` (``pip install 'torch-workbench[hf]'``).

Each takes the keyword arguments of ``workbench.watch`` and passes them on; the watch is
made when training starts (when the framework has built the optimizer) and closed when it
ends or raises. Neither module is imported by ``workbench`` itself.
"""
