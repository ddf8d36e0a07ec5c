"""Scenario templates written by ``workbench init``: commented, and passing ``workbench check`` as written.

``--model pkg.module:Class`` and ``--hf --model Class`` name a class that must exist:
:func:`resolve_model` / :func:`resolve_hf_model` import it (raising :class:`ModelNotFound`,
with what was expected and what to do, when it is not there), and :func:`fit_model` looks
at a plain class to make the synthetic data fit it (the first layer's input size, the
output's classes). What cannot be known is said in the file, at the line to change.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import exception_text

if TYPE_CHECKING:
    import torch

PLAIN = '''\
"""{title}

Written by `workbench init`. Replace the model, the data and the optimizer with
yours; `workbench check {filename}` tells you when something does not fit.
"""

import torch
from torch import nn

from workbench import Scenario
{model_import}

def build(device):
    torch.manual_seed(0)
{model_lines}

    # data: anything re-iterable (a DataLoader, a list of batches). A batch may be
    #   (inputs, targets)           -> model(*inputs), loss_fn(outputs, targets)
    #   {{"x": ..., "labels": ...}}  -> model(**batch), loss_fn(outputs, batch)
    #   any other structure         -> give forward=lambda model, batch: ...
    # Tensors are moved to `device` for you; other values pass through.
    g = torch.Generator().manual_seed(0)
{data_lines}
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=32, shuffle=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn={loss},  # or None when the model returns .loss; may return a dict of parts
        data=data,
        description="{description}",
        # -- optional, as your training loop does it ------------------------------------
        # scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9),
        # scheduler_interval="epoch",  # "step" (default) or "epoch" (one pass over data)
        # scheduler_step=lambda sched, step, epoch: sched.step_update(step),  # timm-style
        # clip_grad_norm=1.0,          # the engine clips and records the norm before/after
        # before_step=lambda model, optimizer: None,  # after backward: EMA, gradient surgery
        # amp="bf16",                  # or "fp16" (with a GradScaler), as you train
        # batch_dim=1,                 # time-major batches (seq, batch, ...)
        # forward=lambda model, batch: model(batch["x"]),  # when the model takes the batch its own way
        # eval_data=...,               # held-out batches for the bench's quality column
        # carries_state=True, state=lambda: ..., load_state=lambda value: ...,  # state outside the model
    )
'''

PLAIN_MODEL = '''\
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)'''

PLAIN_DATA = '''\
    xs = torch.randn(512, 16, generator=g)
    ys = (xs[:, :4].sum(1) > 0).long()  # a learnable rule: 2 classes'''

CLASS_MODEL = '''\
    # {cls}() as `workbench init` found it; pass your constructor's arguments here.
    model = {cls}().to(device)'''

# A constructor with required arguments: the file says which, and stops at them until filled in.
CLASS_MODEL_ARGS = '''\
    # ADJUST: {cls}.__init__ needs arguments `workbench init` cannot guess: {params}.
    # Pass yours on the model line, delete the raise, then make the data below fit forward().
    raise NotImplementedError("{filename}: pass {cls}'s arguments ({params}) in build(), then delete this line")
    model = {cls}({call_args}).to(device)'''

HF = '''\
"""{title}

Written by `workbench init --hf`. A Hugging Face model built from a tiny config
(nothing is downloaded), dict batches as a tokenizer gives them, and the loss
computed inside the model (loss_fn=None reads outputs.loss). Replace the config
with yours, or load weights with from_pretrained inside build().
"""

import torch

from workbench import Scenario

REQUIRES = ("transformers",)  # `workbench list` skips this file, naming why, where it is missing


def build(device):
    from transformers import {config_import}

    torch.manual_seed(0)
    config = {config_class}({config_args})
    model = {model_class}(config).to(device)

    # Batches as a tokenizer + DataCollator give them: input_ids, attention_mask{extra_keys}.
    # The model is called model(**batch); {loss_note}.
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(8):
{batch_lines}

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return Scenario(
        model=model,
        optimizer=optimizer,
        loss_fn={loss}
        data=data,
        description="{description}",
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4)),
        scheduler_interval="step",
        # A guard against spikes, set above the gradient norm (~1.2) this tiny model trains at:
        # a max_norm that every step exceeds rescales every update (`workbench check` warns
        # grad_clipping). Size yours from the gradient norms `workbench run` shows.
        clip_grad_norm=5.0,
        # amp="bf16",  # as you train
    )
'''

GPT2 = dict(config_import="GPT2Config, GPT2LMHeadModel", config_class="GPT2Config", model_class="GPT2LMHeadModel",
            config_args="vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0")

# Any transformers config takes these names (attribute_map turns hidden_size into n_embd, d_model ...);
# the token ids are set inside the tiny vocabulary (GPT-2's 50256 is not), and a pad token
# lets a ...ForSequenceClassification of a decoder find each sequence's last token.
HF_CONFIG_ARGS = ("vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, "
                  "intermediate_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, "
                  "eos_token_id=0")

IDS = "        ids = torch.randint(0, config.vocab_size, (8, 32), generator=g)"
MASK = '"input_ids": ids, "attention_mask": torch.ones_like(ids)'


@dataclass(frozen=True)
class HFHead:
    """What one kind of transformers head takes with a batch of 8 sequences of 32 tokens."""

    batch_lines: str  # inside `for _ in range(8):`, ending in data.append(...)
    extra_keys: str = ", labels"
    loss_note: str = "with labels it returns .loss"
    loss: str = "None,  # the model's own loss: outputs.loss"
    known: bool = True
    config_args: str = ""  # what this head needs in the config besides HF_CONFIG_ARGS


def _lm(comment: str) -> HFHead:
    return HFHead(f"{IDS}\n        labels = ids.clone()  # {comment}\n"
                  f"        data.append({{{MASK}, \"labels\": labels}})")


def _labels(expr: str, comment: str) -> HFHead:
    return HFHead(f"{IDS}\n        labels = {expr}  # {comment}\n"
                  f"        data.append({{{MASK}, \"labels\": labels}})")


# Matched against the class name in order: the head decides what `labels` (or its stand-ins) must be.
HF_HEADS: tuple[tuple[str, HFHead], ...] = (
    ("ForSequenceClassification", _labels("torch.randint(0, config.num_labels, (8,), generator=g)",
                                          "one class per sequence (num_labels, 2 by default)")),
    ("ForNextSentencePrediction", _labels("torch.randint(0, 2, (8,), generator=g)",
                                          "one per pair: 0 the second sentence follows, 1 it does not")),
    ("ForTokenClassification", _labels("torch.randint(0, config.num_labels, (8, 32), generator=g)",
                                       "one class per token (-100: not scored)")),
    ("ForMultipleChoice", HFHead(
        "        ids = torch.randint(0, config.vocab_size, (8, 4, 32), generator=g)  # 4 choices per sample\n"
        "        labels = torch.randint(0, 4, (8,), generator=g)  # the right choice per sample\n"
        f"        data.append({{{MASK}, \"labels\": labels}})")),
    ("ForQuestionAnswering", HFHead(
        f"{IDS}\n"
        "        start = torch.randint(0, 16, (8,), generator=g)  # the answer span's token positions\n"
        "        end = start + torch.randint(0, 16, (8,), generator=g)\n"
        f"        data.append({{{MASK}, \"start_positions\": start, \"end_positions\": end}})",
        extra_keys=", start_positions, end_positions", loss_note="with the answer spans it returns .loss")),
    ("ForPreTraining", HFHead(
        f"{IDS}\n"
        "        labels = ids.clone()  # the masked-LM part (a collator sets unmasked tokens to -100)\n"
        "        pair = torch.randint(0, 2, (8,), generator=g)  # the next-sentence part, one per sample\n"
        f"        data.append({{{MASK}, \"labels\": labels, \"next_sentence_label\": pair}})",
        extra_keys=", labels, next_sentence_label")),
    ("ForCausalLM", _lm("the model shifts the labels itself")),
    ("LMHeadModel", _lm("the model shifts the labels itself")),
    ("WithLMHead", _lm("the model shifts the labels itself")),
    ("ForMaskedLM", _lm("every token scored; DataCollatorForLanguageModeling masks 15% and sets the rest to -100")),
    # An encoder-decoder shifts the labels right behind decoder_start_token_id (T5's config has none).
    ("ForConditionalGeneration", HFHead(_lm("the target sequence; the model makes decoder_input_ids from it")
                                        .batch_lines, config_args=", decoder_start_token_id=0")),
)

# A bare encoder/decoder (BertModel, GPT2Model): no head, no loss of its own.
HF_BASE = HFHead(
    f"{IDS}\n        data.append({{{MASK}}})",
    extra_keys="", loss_note="a bare model has no head and returns no loss",
    loss=("lambda outputs, batch: sum(v.pow(2).mean() for v in outputs.values() if torch.is_tensor(v)),\n"
          "        # ADJUST: a stand-in objective over every output (a pooler too), that only makes the\n"
          "        # template run: put your head and its loss here"))

HF_UNKNOWN = HFHead(
    f"{IDS}\n"
    "        # ADJUST: `workbench init` does not know this head; these are a language model's labels.\n"
    "        # Give what its forward() documents for the loss.\n"
    "        labels = ids.clone()\n"
    f"        data.append({{{MASK}, \"labels\": labels}})",
    known=False)


def hf_head(class_name: str) -> HFHead:
    """The batch a transformers class named ``class_name`` needs for its own loss."""
    for marker, head in HF_HEADS:
        if marker in class_name:
            return head
    return HF_BASE if class_name.endswith("Model") else HF_UNKNOWN


class ModelNotFound(Exception):
    """``--model`` names something that does not import, does not exist, or is not a model class."""


@dataclass(frozen=True)
class ModelFit:
    """How the plain template's data fits a model class, as far as `workbench init` could tell."""

    data_lines: str = PLAIN_DATA
    loss: str = "nn.CrossEntropyLoss()"
    needs_args: tuple[str, ...] = ()  # constructor parameters without a default
    note: str = ""  # what the user must adjust, when the fit is not known ("" when it is)


def resolve_model(spec: str, folder: Path) -> type:
    """The class ``pkg.module:Class`` names, imported as the scenario will import it: with the
    scenario's folder first on ``sys.path``. ModelNotFound says which name failed and why."""
    module_name, _, name = spec.partition(":")
    saved = list(sys.path)
    sys.path.insert(0, str(folder.resolve()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise ModelNotFound(
            f"--model {spec}: no module named {missing!r} importable from {folder.resolve()} (the scenario's "
            "folder, first on sys.path when it loads) or the installed packages; nothing was written. "
            "Expected pkg.module:Class naming your model's module: write the scenario next to it, or "
            "install its package (pip install -e .).") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed on import: say how
        raise ModelNotFound(f"--model {spec}: importing {module_name} raised {exception_text(exc)}; "
                            "nothing was written. Fix the module, then run workbench init again.") from None
    finally:
        sys.path[:] = saved
    import torch

    obj = getattr(module, name, None)
    if obj is None:
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__)
        near = difflib.get_close_matches(name, found, n=1)
        hint = f" Did you mean {module_name}:{near[0]}?" if near else ""
        listed = f"its nn.Module classes: {', '.join(found)}" if found else "it defines no nn.Module class"
        raise ModelNotFound(f"--model {spec}: {module_name} ({getattr(module, '__file__', '?')}) has no {name!r}; "
                            f"{listed}. Nothing was written.{hint}")
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ModelNotFound(f"--model {spec}: {name} is a {type(obj).__name__}, not an nn.Module subclass; "
                            "nothing was written. Name the model's class (pkg.module:Class).")
    return obj


def resolve_hf_model(name: str) -> type:
    """The transformers model class ``name`` (``BertForMaskedLM`` or ``transformers:BertForMaskedLM``)."""
    cls_name = name.rpartition(":")[2] or name
    try:
        import transformers
    except ImportError:
        raise ModelNotFound(f"--hf --model {name}: transformers is not installed, so {cls_name} cannot be "
                            "checked; nothing was written. pip install 'torch-workbench[hf]' (or drop "
                            "--model for the GPT-2 template).") from None
    try:
        obj = getattr(transformers, cls_name)
    except (AttributeError, ImportError, RuntimeError):  # a lazy module's missing backend raises too
        obj = None
    if obj is None:
        models = [n for n in dir(transformers) if n[:1].isupper() and ("For" in n or n.endswith("Model"))]
        near = difflib.get_close_matches(cls_name, models, n=3, cutoff=0.8)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ModelNotFound(f"--hf --model {name}: transformers {transformers.__version__} has no {cls_name!r}; "
                            f"nothing was written. Expected a model class such as BertForSequenceClassification "
                            f"or GPT2LMHeadModel.{hint}")
    if not (isinstance(obj, type) and issubclass(obj, transformers.PreTrainedModel)) \
            or cls_name.endswith("PreTrainedModel") or obj.config_class is None:
        what = "an Auto class (it builds others: from_config)" if cls_name.startswith("Auto") else \
            f"not a model class built from a config ({type(obj).__name__})"
        raise ModelNotFound(f"--hf --model {name}: {cls_name} is {what}; nothing was written. Expected a "
                            "model class such as BertForSequenceClassification or GPT2LMHeadModel.")
    if getattr(obj, "main_input_name", "input_ids") != "input_ids":
        raise ModelNotFound(f"--hf --model {name}: {cls_name} takes {obj.main_input_name}, and the --hf "
                            "template writes token batches (input_ids); nothing was written. Start from "
                            "`workbench init --hf` and give the batches your model takes.")
    return obj


def _needed_params(cls: type) -> tuple[str, ...]:
    """The constructor's parameters without a default: what `Class()` cannot do without."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in sig.parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _samples(per_sample: int) -> int:
    """How many synthetic samples: 512 small ones, fewer big ones (the data stays a few MB)."""
    return 512 if per_sample <= 4096 else 256 if per_sample <= 65536 else 64


@dataclass(frozen=True)
class _Input:
    """One shape of input to try on the model, and the code that makes it in the file."""

    shape: tuple[int, ...]  # one sample's
    what: str  # for the comment
    vocab: int = 0  # token ids below this; 0: float features
    # Float inputs: the shape of one class's mean, broadcast over a sample (per feature or channel).
    means: tuple[int, ...] = ()

    @property
    def per_sample(self) -> int:
        return math.prod(self.shape)

    def make(self, n: int) -> torch.Tensor:
        import torch

        return torch.randint(0, self.vocab, (n, *self.shape)) if self.vocab else torch.randn(n, *self.shape)

    def code(self, n: int) -> str:
        dims = ", ".join(map(str, (n, *self.shape)))
        return f"torch.randint(0, {self.vocab}, ({dims}), generator=g)" if self.vocab else \
            f"torch.randn({dims}, generator=g)"


def _input_candidates(model: torch.nn.Module) -> tuple[str, list[_Input]]:
    """Inputs that fit the model's first Linear/Conv/Embedding/RNN: ('', []) when there is none."""
    from torch import nn

    for qual, m in model.named_modules():
        where = f"{qual or 'the model'} ({type(m).__name__})"
        if isinstance(m, nn.modules.lazy.LazyModuleMixin):
            return "", []  # its input size is whatever comes first: nothing to read
        if isinstance(m, nn.Linear):
            f = m.in_features
            return where, [_Input((f,), f"{f} features per sample", means=(f,))]
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            v = m.num_embeddings
            return where, [_Input((t,), f"sequences of {t} token ids below {v}", vocab=v) for t in (32, 16, 64)]
        if isinstance(m, nn.RNNBase):
            # Batch-first data only: a time-major RNN (batch_first=False) sees this trial batch
            # as 32 sequences of 2 steps, its output is not (2, ...), and the file says to adjust.
            f = m.input_size
            return where, [_Input((32, f), f"sequences of 32 steps of {f} features (batch first)", means=(1, f))]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            c, dims = m.in_channels, len(m.kernel_size)
            sizes = {1: (64, 128, 32, 256), 2: (32, 28, 64, 224), 3: (16, 32)}[dims]
            return where, [_Input((c, *[s] * dims), f"{'x'.join(map(str, (c, *[s] * dims)))} inputs",
                                  means=(c, *[1] * dims)) for s in sizes]
    return "", []


def fit_model(cls: type, filename: str) -> ModelFit:
    """Data and loss that fit ``cls``: built without arguments (when its constructor allows),
    fed a trial batch of 2 shaped for its first layer, its output read for the classes."""
    import torch

    needs = _needed_params(cls)
    if needs:
        return ModelFit(needs_args=needs, note=(
            f"{cls.__name__}() needs arguments ({', '.join(needs)}): fill them in and make the data fit "
            f"its forward() in {filename}, then check it"))
    unknown = ("ADJUST: `workbench init` could not tell what {cls}'s forward() takes ({why}).\n"
               "    # This data is 16 features per sample and 2 classes: make xs, ys and loss_fn fit it.\n")
    with torch.random.fork_rng(devices=[]):
        try:
            model = cls()
        except Exception as exc:  # noqa: BLE001 - the user's constructor: reported in the file
            why = f"{cls.__name__}() raised {exception_text(exc)}"
            return ModelFit(data_lines=f"    # {unknown.format(cls=cls.__name__, why=why)}{PLAIN_DATA}",
                            note=f"{why}; the data is a placeholder: adjust it in {filename}")
        where, candidates = _input_candidates(model)
        why = "no Linear, Conv, Embedding or RNN layer found"
        for cand in candidates:
            try:
                with torch.no_grad():
                    out = model(cand.make(2))
            except Exception as exc:  # noqa: BLE001 - try the next input shape
                why = f"{where} takes {cand.what}, but forward() raised {exception_text(exc)}"
                continue
            fit = _fit_output(cand, where, out)
            if fit is not None:
                return fit
            why = (f"given {cand.what} for {where}, a batch of 2 comes out as {_describe(out)}, "
                   "not (batch, classes) or (batch,)")
            break
    note = why.splitlines()[0] if why else ""
    return ModelFit(data_lines=f"    # {unknown.format(cls=cls.__name__, why=note)}{PLAIN_DATA}",
                    note=f"{note}; the data is a placeholder: adjust it in {filename}")


def _describe(out: Any) -> str:
    shape = getattr(out, "shape", None)
    return f"a tensor of shape {tuple(shape)}" if shape is not None else f"a {type(out).__name__}"


def _fit_output(cand: _Input, where: str, out: Any) -> ModelFit | None:
    """Targets and loss for an output of the trial batch of 2: classes, or one value per sample."""
    import torch

    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0 or out.shape[0] != 2:
        return None
    n = _samples(cand.per_sample)
    xs = f"    xs = {cand.code(n)}  # {where} takes {cand.what}"
    if out.dim() == 2 and out.shape[1] >= 2:
        classes = int(out.shape[1])
        if cand.vocab:  # token ids: each class has a marker token
            ys = f"    ys = torch.randint(0, {classes}, ({n},), generator=g)  # {classes} classes"
            rule = f"    xs[:, :8] = ys[:, None] % {cand.vocab}  # a learnable rule: the class's marker token"
            return ModelFit(data_lines=f"{ys}\n{xs}\n{rule}", loss="nn.CrossEntropyLoss()")
        ys = f"    ys = torch.randint(0, {classes}, ({n},), generator=g)  # {classes} classes"
        # One mean per class and channel (per feature for a Linear): it survives a global pooling.
        means = ", ".join(map(str, (classes, *cand.means)))
        rule = f"    xs += 0.5 * torch.randn({means}, generator=g)[ys]  # a learnable rule: one mean per class"
        return ModelFit(data_lines=f"{ys}\n{xs}\n{rule}", loss="nn.CrossEntropyLoss()")
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        keep = ", keepdim=True" if out.dim() == 2 else ""
        rule = f"    ys = xs.flatten(1)[:, :4].float().mean(1{keep})  # a learnable target: one value per sample"
        return ModelFit(data_lines=f"{xs}\n{rule}", loss="nn.MSELoss()")
    return None


def render(filename: str, *, model: str | None = None, hf: bool = False, fit: ModelFit | None = None) -> str:
    """The template text. ``model``: ``pkg.module:Class`` (plain; ``fit`` from :func:`fit_model`
    shapes its data), or with ``hf`` a transformers model class (``BertForMaskedLM`` or
    ``transformers:BertForMaskedLM``) configured tiny, with the batches its head needs."""
    cls = (model.rpartition(":")[2] or model) if model else None
    title = f"A scenario for {cls}." if cls else "A scenario for the workbench."
    if hf:
        if not cls:
            return HF.format(title=title, description="tiny GPT-2 LM from a config built in code",
                             **GPT2, **_head_fields(_lm("GPT-2 shifts the labels itself")))
        return HF.format(title=title, description=f"tiny {cls} from a config built in code", config_import=cls,
                         config_class=f"{cls}.config_class", model_class=cls,
                         config_args=HF_CONFIG_ARGS + hf_head(cls).config_args, **_head_fields(hf_head(cls)))
    if model:
        fit = fit or ModelFit()
        module, _, name = model.partition(":")
        if fit.needs_args:
            params = ", ".join(fit.needs_args)
            lines = CLASS_MODEL_ARGS.format(cls=name, params=params, filename=filename,
                                            call_args=", ".join(f"{p}=..." for p in fit.needs_args))
        else:
            lines = CLASS_MODEL.format(cls=name)
        return PLAIN.format(title=title, filename=filename, description=f"{name} on synthetic data",
                            model_import=f"from {module} import {name}\n", model_lines=lines,
                            data_lines=fit.data_lines, loss=fit.loss)
    return PLAIN.format(title=title, filename=filename, description="2-layer MLP on synthetic data",
                        model_import="", model_lines=PLAIN_MODEL, data_lines=PLAIN_DATA,
                        loss="nn.CrossEntropyLoss()")


def _head_fields(head: HFHead) -> dict[str, str]:
    return {"batch_lines": head.batch_lines, "extra_keys": head.extra_keys, "loss_note": head.loss_note,
            "loss": head.loss}
