"""What a cached completion is keyed by: everything that shapes the reply, nothing that does not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stages.checkers.judge import JudgeConfig
from stages.difficulty import DifficultyConfig
from stages.request_cache import RequestCache, request_key
from stages.rewrite import RewriteConfig
from stages.teachers.base import Completion, LlamaCppTeacher, OpenAITeacher, TeacherInfo, VLLMTeacher

MESSAGES = ({"role": "user", "content": "What is 2 + 2?"},)


def key(teacher, index: int = 0, choices=None) -> str:
    info = TeacherInfo(teacher.backend, teacher.model, None)
    return request_key(info, MESSAGES, teacher.output_params(0), index, choices)


@pytest.mark.parametrize(("teacher", "change"), [
    (OpenAITeacher(name="t", model="m", base_url="http://127.0.0.1:1/v1"),
     {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}),
    (OpenAITeacher(name="t", model="m", base_url="http://127.0.0.1:1/v1"), {"temperature": 0.1}),
    (VLLMTeacher(name="t", model="m"), {"chat_template": "{{ messages }}"}),
    (VLLMTeacher(name="t", model="m"), {"max_model_len": 4096}),
    (LlamaCppTeacher(name="t"), {"n_ctx": 512}),
    (LlamaCppTeacher(name="t"), {"seed": 7}),
])
def test_settings_that_shape_the_reply_change_the_key(teacher, change):
    assert key(teacher) != key(teacher.model_copy(update=change))


@pytest.mark.parametrize("change", [{"name": "renamed"}, {"base_url": "http://10.0.0.1:8000/v1"},
                                    {"concurrency": 64}, {"max_retries": 1}])
def test_settings_that_do_not_shape_the_reply_keep_the_key(change):
    teacher = OpenAITeacher(name="t", model="m", base_url="http://127.0.0.1:1/v1")
    assert key(teacher) == key(teacher.model_copy(update=change))


def test_index_and_constraint_are_part_of_the_key():
    teacher = OpenAITeacher(name="t", model="m", base_url="http://127.0.0.1:1/v1")
    assert len({key(teacher), key(teacher, 1), key(teacher, choices=("easy", "hard"))}) == 3


def test_a_corrupt_entry_is_a_miss_and_a_put_is_whole(tmp_path):
    cache = RequestCache(str(tmp_path))
    k = "ab" + "0" * 30
    cache.put(k, Completion("4", None, "stop", 3, 1, 0.1), {"index": 0})
    assert cache.get(k).text == "4" and cache.keys() == {k}
    (tmp_path / "ab" / f"{k}.json").write_text("{not json")
    assert cache.get(k) is None and not list(tmp_path.glob("ab/*.tmp"))


@pytest.mark.parametrize("stage", [lambda t: DifficultyConfig(teacher=t), lambda t: RewriteConfig(teacher=t),
                                   lambda t: JudgeConfig(teacher=t)])
@pytest.mark.parametrize("extra", [{"samples": 4}, {"budget": 1000}])
def test_question_asking_stages_refuse_generation_settings(stage, extra):
    with pytest.raises(ValidationError, match="samples and budget are generate's settings"):
        stage({"name": "judge", "backend": "llamacpp", **extra})
