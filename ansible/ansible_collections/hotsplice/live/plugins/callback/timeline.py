# -*- coding: utf-8 -*-
# hotsplice.live.timeline: a notification callback that writes one JSON object per line for
# every task start and result on every host, with the controller's wall-clock time, and the
# play recap at the end — the timeline of a rollout, for dashboards and for `cargo xtask fleet`.

from __future__ import annotations

DOCUMENTATION = r"""
---
name: timeline
type: notification
short_description: Write a rollout's timeline as JSON lines
description:
  - Appends one JSON object per line to a file for each play start, each task start and
    result per host (ok, changed, failed, ignored, skipped, unreachable), and the final recap
    per host. Times are the controller's clock (C(time), seconds since the epoch).
  - Results of M(hotsplice.live.patch) carry the patch id and the per-process results
    (pid, result, pause).
version_added: "0.1.0"
requirements:
  - enable in configuration (C(callbacks_enabled = hotsplice.live.timeline))
options:
  path:
    description: The file the timeline is appended to.
    type: path
    required: true
    env:
      - name: HOTSPLICE_TIMELINE
    ini:
      - section: callback_hotsplice_timeline
        key: path
"""

import json
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "hotsplice.live.timeline"
    CALLBACK_NEEDS_ENABLED = True

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._path = self.get_option("path")

    def _write(self, event, **fields):
        fields["event"] = event
        fields["time"] = round(time.time(), 6)
        with open(self._path, "a") as f:
            f.write(json.dumps(fields, default=str, sort_keys=True) + "\n")

    def v2_playbook_on_play_start(self, play):
        self._write("play", play=play.get_name())

    def v2_runner_on_start(self, host, task):
        self._write("start", host=host.get_name(), task=task.get_name())

    def _result(self, status, result):
        res = result._result
        fields = dict(
            host=result._host.get_name(),
            task=result._task.get_name(),
            action=result._task.action,
            status=status,
            changed=bool(res.get("changed")),
        )
        if res.get("msg"):
            fields["msg"] = str(res.get("msg"))
        if "rc" in res:
            fields["rc"] = res.get("rc")
        if "patch" in res:
            fields["patch"] = res.get("patch")
            fields["processes"] = [
                {k: p.get(k) for k in ("pid", "result", "pause_us", "stops", "threads")}
                for p in res.get("processes", [])
            ]
            fields["skipped_processes"] = [
                {k: s.get(k) for k in ("pid", "reason")}
                for s in res.get("skipped_processes", [])
            ]
            fields["failed_processes"] = res.get("failed_processes", [])
            if "installed" in res:
                fields["installed"] = res.get("installed")
        if "stdout" in res and result._task.action in (
            "ansible.builtin.shell",
            "ansible.builtin.command",
            "shell",
            "command",
        ):
            fields["stdout"] = str(res.get("stdout"))[:500]
        if "attempts" in res:
            fields["attempts"] = res.get("attempts")
        self._write("result", **fields)

    def v2_runner_on_ok(self, result):
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        for host in sorted(stats.processed.keys()):
            self._write("recap", host=host, **stats.summarize(host))
