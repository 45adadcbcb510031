"""Initialization options: every field checked on its own, bad values replaced by defaults."""

from __future__ import annotations

import sys

from torchls.config import InitOptions, WorkerOptions, parse_init_options


def test_nothing_sent_means_trusted_defaults() -> None:
    options, warnings = parse_init_options(None)
    assert options == InitOptions()
    assert options.trusted and options.user_code_allowed
    assert options.worker_command() == (sys.executable,)
    assert warnings == []


def test_vscode_style_options_are_read() -> None:
    options, warnings = parse_init_options(
        {
            "trusted": False,
            "allowUserCode": True,
            "worker": {
                "interpreter": ["/opt/py/bin/python", "-X", "dev"],
                "timeoutSeconds": 5,
                "memoryLimitMB": 2048,
            },
        }
    )
    assert warnings == []
    assert options.trusted is False
    assert options.user_code_allowed is False  # untrusted wins over the setting
    assert options.worker == WorkerOptions(("/opt/py/bin/python", "-X", "dev"), 5.0, 2048)
    assert options.worker_command() == ("/opt/py/bin/python", "-X", "dev")


def test_each_bad_field_falls_back_alone() -> None:
    options, warnings = parse_init_options(
        {
            "trusted": 1,
            "allowUserCode": False,
            "worker": {"timeoutSeconds": True, "interpreter": [3]},
        }
    )
    assert options.trusted is False  # 1 is not a boolean: a safety switch reads it as "no"
    assert options.allow_user_code is False
    assert options.worker.timeout_seconds == 30.0
    assert options.worker.interpreter == ()
    assert len(warnings) == 3


def test_worker_must_be_an_object() -> None:
    options, warnings = parse_init_options({"worker": "fast"})
    assert options.worker == WorkerOptions()
    assert warnings == ["initializationOptions.worker must be an object; using defaults"]


def test_interpreter_as_a_plain_string() -> None:
    options, _ = parse_init_options({"worker": {"interpreter": "/usr/bin/python3"}})
    assert options.worker_command() == ("/usr/bin/python3",)


def test_default_input_shapes_are_read_and_bad_entries_dropped() -> None:
    options, warnings = parse_init_options(
        {"defaultInputShapes": {"resnet50": "(1, 3, 224, 224)", "Net": 3, "*": "(1, 10)"}}
    )
    assert dict(options.default_input_shapes) == {"resnet50": "(1, 3, 224, 224)", "*": "(1, 10)"}
    assert len(warnings) == 1 and "defaultInputShapes['Net']" in warnings[0]
    options, warnings = parse_init_options({"defaultInputShapes": "(1, 3)"})
    assert dict(options.default_input_shapes) == {} and "must be an object" in warnings[0]
