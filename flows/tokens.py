"""A model's token sets, built with its own tokenizer: the capture's prompt set and the evaluations' token set.

Both are stored under their content hash (``prompts/set=…``). The evaluation token set shares no
document with the prompt set (``prompts.build_eval_tokens``); for the offline suite both come from
the suite's held-out documents, so neither holds text the suite trained on.
"""

from __future__ import annotations

from flows.params import EvalParams, PromptParams
from massive_activations.capture.prompts import (
    build_eval_tokens,
    build_prompt_set,
    first_token_for,
    save_prompt_set,
    texts_from_file,
    texts_from_hub_dataset,
)
from massive_activations.errors import BadInputError
from massive_activations.sources.corpus import stdlib_docstrings
from massive_activations.sources.model_parts import check_config
from massive_activations.sources.offline_suite import SUITES, split_documents
from massive_activations.store import Store


def _texts(text_file: str | None, hub_dataset: str | None, hub_file: str | None) -> list[str] | None:
    if text_file:
        return texts_from_file(text_file)
    if hub_dataset:
        if not hub_file:
            raise BadInputError(f"hub_dataset {hub_dataset!r} needs hub_file: the dataset file to read texts from")
        return texts_from_hub_dataset(hub_dataset, hub_file)
    return None


def prompt_texts(prompts: PromptParams, suite: str, source_kind: str) -> list[str]:
    """The user's texts, else the offline suite's held-out documents, else the stdlib's docstrings."""
    texts = _texts(prompts.text_file, prompts.hub_dataset, prompts.hub_file)
    if texts is not None:
        return texts
    if source_kind == "folder" and suite in SUITES:
        spec = SUITES[suite]  # held-out documents of the suite's own corpus
        return split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    return list(stdlib_docstrings().documents)


def prepare_tokens(store: Store, source, model: str, first_step: int, prompts: PromptParams, texts: list[str],
                   folder_source: bool, evals: EvalParams | None = None) -> tuple[str, str | None, dict | None]:
    """The ids of the model's prompt set and (with ``evals``) its evaluation token set, both stored, and
    the evaluation set's budget (the tokens it holds, and what was asked)."""
    from transformers import AutoConfig, AutoTokenizer

    with source.checkout(model, first_step, weights=False) as path:  # config and tokenizer only
        config = AutoConfig.from_pretrained(path)
        check_config(config)  # an architecture capture cannot read fails before any weights are fetched
        context = config.max_position_embeddings
        tokenizer = AutoTokenizer.from_pretrained(path)
    length = prompts.length or min(context, 2048)
    if length > context:
        raise BadInputError(f"prompt length {length} exceeds {model}'s context of {context} tokens")
    first = first_token_for(prompts.first_token, tokenizer, folder_source)
    name = f"{model}-n{prompts.n_sequences}-len{length}" + ("" if first == "eos" else f"-{first}")
    built = build_prompt_set(name, texts, tokenizer, prompts.n_sequences, length, prompts.seed, first=first)
    eval_tokens = None if evals is None else build_eval_tokens(
        built, texts, tokenizer, evals.train_tokens, evals.heldout_tokens,
        _texts(evals.eval_text_file, evals.eval_hub_dataset, evals.eval_hub_file))  # both built before either is stored
    if eval_tokens is None:
        return save_prompt_set(store, built), None, None
    return save_prompt_set(store, built), save_prompt_set(store, eval_tokens), eval_tokens.source["budget"]
