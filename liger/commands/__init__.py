"""Subcommands of the ``liger`` CLI, and the options they share."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from ..utils import file_fields

_CONFIG_SOURCE = Path(__file__).resolve().parents[1] / "models" / "configuration_liger.py"
# fields of LigerConfig that are copied from the base model, not chosen by the user
_NOT_OPTIONS = {"base_model_type", "tie_word_embeddings", "use_cache"}


def add_liger_options(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per LigerConfig field (help text: the field's docstring)."""
    from ..recipes import RECIPES

    group = parser.add_argument_group("Liger options (unset = the paper's value)")
    group.add_argument("--recipe", choices=list(RECIPES), default=None, dest="liger_recipe",
                       help="a named set of the options below (the flags given override it): 'paper' (the defaults), "
                       "'memory' (window 512 + 4 sinks + a 512-key pooled cache of the tokens the state recalls "
                       "worst, no recurrent output: long-range retrieval with constant decode memory, used as it is "
                       "or fine-tuned with `liger finetune --config liger-memory`; liger/recipes.py)")
    for field in file_fields(_CONFIG_SOURCE, "LigerConfig"):
        if field.name in _NOT_OPTIONS:
            continue
        kwargs: dict = dict(default=None, help=f"{field.doc} Default: {field.default}.".replace("%", "%%"),
                            dest=f"liger_{field.name}")
        annotation = field.annotation
        if annotation.startswith("Literal["):
            kwargs["choices"] = list(ast.literal_eval(annotation[len("Literal"):]))
        elif annotation == "bool":
            kwargs.update(type=_parse_bool, metavar="{true,false}")
        elif annotation.startswith("list[int]"):
            kwargs.update(type=_parse_int_list, metavar="I,J,...")
        elif annotation.startswith("int"):
            kwargs.update(type=int, metavar="N")
        elif annotation.startswith("float"):
            kwargs.update(type=float, metavar="X")
        else:
            raise TypeError(f"no CLI type for LigerConfig.{field.name}: {annotation}")
        group.add_argument("--" + field.name.replace("_", "-"), **kwargs)


def liger_options(args: argparse.Namespace) -> dict:
    """The Liger options given on the command line, over those of ``--recipe`` (unset ones are left to the config
    defaults)."""
    from ..recipes import recipe_options

    given = {k[len("liger_"):]: v for k, v in vars(args).items() if k.startswith("liger_") and v is not None}
    return recipe_options(given.pop("recipe", None), **given)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _parse_int_list(text: str) -> list[int]:
    try:
        if text.strip().startswith("["):
            return [int(x) for x in json.loads(text)]
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got '{text}'") from err


def positive_int_list(text: str) -> list[int]:
    """``"512,1024"`` -> ``[512, 1024]``; an argparse error unless every value is a positive integer."""
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values
