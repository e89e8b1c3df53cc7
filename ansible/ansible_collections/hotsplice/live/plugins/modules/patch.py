#!/usr/bin/python
# -*- coding: utf-8 -*-
# hotsplice.live.patch: apply or undo a hotsplice live patch on the processes of one host.
# Everything it does goes through `hotsplice ... --json`; it never touches a process itself.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: patch
short_description: Apply or undo a hotsplice live patch on the running processes of a host
description:
  - With O(state=present), applies a signed hotsplice bundle to every running process of the
    host that maps its target file (O(file)), or to the given O(pids), or — with neither — to
    every process that maps a file with the bundle's build-id, using C(hotsplice apply --json).
  - With O(state=absent), undoes the patch in those processes (C(hotsplice undo --json)).
  - Idempotent. Processes that already have the patch are left alone by O(state=present) and
    processes that do not have it by O(state=absent); a second run reports no change.
  - The bundle must already be on the host (copy it with M(ansible.builtin.copy)). C(hotsplice)
    checks its signature against the host's trusted keys (O(trust_dir)) and refuses unsigned,
    tampered or untrusted bundles before any process is touched; this module has no option to
    accept such a bundle.
  - With O(install=true), the bundle is also kept in hotsplice's store (C(hotsplice install
    --no-apply)) so that C(hotsplice watch) applies it to processes started later;
    O(state=absent) then uninstalls it as well.
  - Check mode runs C(hotsplice check), which proves the bundle against the memory of each process
    and predicts what apply would do, and changes nothing.
  - Diff mode shows, per process, whether it has the patch before and after.
version_added: "0.1.0"
author:
  - hotsplice developers
options:
  bundle:
    description:
      - Path of the bundle on the managed host. Required for O(state=present); for
        O(state=absent) it gives the patch id (or use O(patch_id)).
    type: path
  patch_id:
    description:
      - The patch id (C(hs-...)), for O(state=absent) without O(bundle).
    type: str
  state:
    description:
      - V(present) applies the patch where it is missing; V(absent) undoes it where it is applied.
    type: str
    choices: [present, absent]
    default: present
  file:
    description:
      - Only processes that map this file (an executable or a shared library; also a copy since
        deleted or replaced on disk). Processes mapping another build of it are skipped and
        listed as skipped (see O(any_build)).
    type: path
  pids:
    description:
      - Only these processes. Mutually exclusive with O(file).
    type: list
    elements: int
  each:
    description:
      - Patch each process on its own and report each, instead of all or none. With V(false), one
        refusal leaves every process unpatched and the task fails.
    type: bool
    default: false
  any_build:
    description:
      - With O(file), also processes that map another build of the file (run-pre matching then
        decides, process by process).
    type: bool
    default: false
  install:
    description:
      - Also keep the bundle installed in the store, so C(hotsplice watch) applies it to processes
        that start later (O(state=absent) uninstalls it).
    type: bool
    default: false
  hotsplice:
    description:
      - The hotsplice binary on the managed host (looked up in C(PATH) by default).
    type: path
  state_dir:
    description:
      - hotsplice's state directory (C(--state-dir)); default C($HOTSPLICE_STATE_DIR) or
        C(/run/hotsplice).
    type: path
  trust_dir:
    description:
      - The trusted-keys directory (C(--trust-dir)); default C($HOTSPLICE_TRUST_DIR) or
        C(/etc/hotsplice/trusted-keys).
    type: path
  store:
    description:
      - The store of installed patches (C(--store)); default C($HOTSPLICE_STORE) or
        C(/var/lib/hotsplice).
    type: path
notes:
  - Needs root on the managed host (hotsplice stops the target processes with ptrace).
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Copy the signed bundle to the host
  ansible.builtin.copy:
    src: fix.hsp
    dest: /var/lib/hotsplice-bundles/fix.hsp
    mode: "0644"

- name: Patch every running nginx, and nginx processes started later
  hotsplice.live.patch:
    bundle: /var/lib/hotsplice-bundles/fix.hsp
    file: /usr/sbin/nginx
    install: true
  register: patched

- name: Undo it
  hotsplice.live.patch:
    bundle: /var/lib/hotsplice-bundles/fix.hsp
    file: /usr/sbin/nginx
    install: true
    state: absent
"""

RETURN = r"""
patch:
  description: The patch id.
  returned: always
  type: str
  sample: hs-cb9c4fc84e15
processes:
  description:
    - One entry per process this run changed (or, in check mode, would change), with the
      per-process report of hotsplice (pause, stops, functions).
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 4242
      result: patched
      module: /usr/sbin/nginx
      pause_us: 310
      stops: 1
      threads: 5
      functions: [read_document]
      namespace: null
skipped_processes:
  description:
    - Processes found but left alone, with the reason (already applied, another build).
      (Not C(skipped), which Ansible reads as "the task was skipped".)
  returned: always
  type: list
  elements: dict
failed_processes:
  description: Processes where the operation failed (with O(each)), with the error.
  returned: always
  type: list
  elements: dict
installed:
  description: Whether the patch is installed in the store after this run (with O(install)).
  returned: when O(install=true)
  type: bool
reports:
  description: The JSON objects printed by each hotsplice command that was run, in order.
  returned: always
  type: list
  elements: dict
commands:
  description: The hotsplice command lines that were run, in order.
  returned: always
  type: list
  elements: list
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


class Hotsplice:
    """Runs hotsplice commands with --json and keeps what they printed."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.binary = p["hotsplice"] or module.get_bin_path("hotsplice", required=True)
        self.state_dir = ["--state-dir", p["state_dir"]] if p["state_dir"] else []
        self.trust_dir = ["--trust-dir", p["trust_dir"]] if p["trust_dir"] else []
        self.store = ["--store", p["store"]] if p["store"] else []
        self.commands = []
        self.reports = []

    def run(self, args, ok_codes=(0,)):
        """Runs `hotsplice ARGS`; returns (exit status, parsed JSON). Fails the task when the
        status is not in ok_codes."""
        argv = [self.binary] + args
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv)
        try:
            report = json.loads(out) if out.strip() else {}
        except ValueError:
            report = {"unparsed_stdout": out}
        self.reports.append(report)
        if rc not in ok_codes:
            error = report.get("error") if isinstance(report, dict) else None
            self.fail(
                "%s failed (exit status %d): %s"
                % (" ".join(args[:1]), rc, error or err.strip() or out.strip()),
                rc=rc,
                stderr=err,
                report=report,
            )
        return rc, report

    def fail(self, msg, **extra):
        self.module.fail_json(
            msg=msg, commands=self.commands, reports=self.reports, **extra
        )

    def patch_id(self, bundle):
        _, info = self.run(["info", "--json", bundle])
        try:
            return info["bundle"]["id"]
        except (KeyError, TypeError):
            self.fail("hotsplice info printed no patch id for %s" % bundle)

    def holders(self, patch, pids):
        """The processes (of `pids`, when given) whose recorded patches include `patch`."""
        args = ["list", "--json"] + self.state_dir
        for pid in pids or []:
            args += ["--pid", str(pid)]
        # Exit status 3: a process could not be read; the others are still listed.
        _, listing = self.run(args, ok_codes=(0, 3))
        return sorted(
            p["pid"]
            for p in listing.get("processes", [])
            if any(x.get("id") == patch for x in p.get("patches", []))
        )

    def installed(self, patch):
        """Whether `patch` is installed in the store."""
        # Exit status 1: some process lacks an installed patch (still a valid listing).
        _, status = self.run(
            ["status", "--json"] + self.store + self.trust_dir + self.state_dir,
            ok_codes=(0, 1),
        )
        return any(r.get("patch") == patch for r in status.get("installed", []))


def maps_file(pid, path):
    """Whether process `pid` maps `path` (or a since-deleted file of that name) — the same
    test `hotsplice undo --file` makes."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    name = fields[5].strip()
                    if name.endswith(" (deleted)"):
                        name = name[: -len(" (deleted)")]
                    if name == path:
                        return True
    except OSError:
        pass
    return False


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return "gone"


def summarize(entry, result):
    """A per-process line of the module's result from one of hotsplice's process reports."""
    return {
        "pid": entry.get("pid"),
        "result": result,
        "module": entry.get("module"),
        "pause_us": entry.get("pause_us"),
        "stops": entry.get("stops"),
        "threads": entry.get("threads"),
        "sharers": entry.get("sharers", []),
        "same_build": entry.get("same_build"),
        "prediction": entry.get("prediction"),
        "functions": [f.get("name") for f in entry.get("functions", [])],
        "namespace": entry.get("namespace"),
    }


def diff_text(states, installed):
    lines = []
    if installed is not None:
        lines.append("installed in the store: %s" % ("yes" if installed else "no"))
    for pid in sorted(states):
        lines.append("pid %d (%s): %s" % (pid, comm(pid), states[pid]))
    return "\n".join(lines) + "\n"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            bundle=dict(type="path"),
            patch_id=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            file=dict(type="path"),
            pids=dict(type="list", elements="int"),
            each=dict(type="bool", default=False),
            any_build=dict(type="bool", default=False),
            install=dict(type="bool", default=False),
            hotsplice=dict(type="path"),
            state_dir=dict(type="path"),
            trust_dir=dict(type="path"),
            store=dict(type="path"),
        ),
        mutually_exclusive=[("file", "pids"), ("install", "pids")],
        required_if=[("state", "present", ("bundle",))],
        required_one_of=[("bundle", "patch_id")],
        supports_check_mode=True,
    )
    p = module.params
    hs = Hotsplice(module)
    if p["any_build"] and not p["file"]:
        hs.fail("any_build needs file")
    if p["bundle"] and not os.path.isfile(p["bundle"]):
        hs.fail("no bundle at %s on this host (copy it first)" % p["bundle"])
    patch = p["patch_id"] or hs.patch_id(p["bundle"])
    if p["patch_id"] and p["bundle"] and hs.patch_id(p["bundle"]) != p["patch_id"]:
        hs.fail("the bundle %s is not patch %s" % (p["bundle"], p["patch_id"]))

    targets = []
    if p["file"]:
        targets += ["--file", p["file"]]
        if p["any_build"]:
            targets.append("--any-build")
    if p["each"]:
        targets.append("--each")

    before = {}
    after = {}
    processes = []
    skipped = []
    failed = []
    changed = False
    installed_before = hs.installed(patch) if p["install"] else None
    installed_after = installed_before

    def record(report, verb):
        """Folds one apply/check/undo report into the result."""
        for e in report.get("processes", []):
            processes.append(summarize(e, verb))
        for s in report.get("skipped", []):
            skipped.append(s)
        for f in report.get("failed", []):
            failed.append(f)

    if p["state"] == "present":
        pid_args = []
        if p["pids"]:
            have = hs.holders(patch, p["pids"])
            for pid in have:
                skipped.append({"pid": pid, "reason": "already applied", "namespace": None})
            for pid in p["pids"]:
                if pid not in have:
                    pid_args += ["--pid", str(pid)]
        if not p["pids"] or pid_args:
            verb = "check" if module.check_mode else "apply"
            args = [verb, p["bundle"]] + targets + pid_args + hs.trust_dir + hs.state_dir
            args.append("--json")
            rc, report = hs.run(args, ok_codes=(0, 1, 2, 3))
            if report.get("ok") is False and not report.get("failed"):
                # All or none: refused (or an error) with every process untouched.
                hs.fail(
                    "hotsplice %s: %s" % (verb, report.get("error", "failed")),
                    rc=rc,
                    report=report,
                )
            record(report, "would patch" if module.check_mode else "patched")
            if rc == 1 and module.check_mode and not report.get("failed"):
                # check: a process whose apply would be refused (e.g. a main loop).
                hs.fail("hotsplice check predicts a refusal", report=report)
        for e in processes:
            before[e["pid"]] = "unpatched"
            after[e["pid"]] = "patched" + (" (predicted)" if module.check_mode else "")
        for s in skipped:
            before[s["pid"]] = after[s["pid"]] = (
                "patched" if s.get("reason") == "already applied" else "skipped: %s" % s.get("reason")
            )
        for f in failed:
            before[f["pid"]] = after[f["pid"]] = "unpatched (failed: %s)" % f.get("error")
        changed = bool(processes)
        if p["install"] and not installed_before:
            if not module.check_mode:
                args = ["install", p["bundle"], "--no-apply"]
                if p["file"]:
                    args += ["--file", p["file"]]
                hs.run(args + hs.store + hs.trust_dir + hs.state_dir + ["--json"])
            installed_after = True
            changed = True
    else:
        if p["install"] and installed_before:
            if not module.check_mode:
                # --keep-applied: uninstall alone would undo the patch in every process of the
                # system that has it; the undo below is limited to file/pids.
                hs.run(
                    ["uninstall", patch, "--keep-applied"]
                    + hs.store
                    + hs.state_dir
                    + ["--json"]
                )
            installed_after = False
            changed = True
        holders = hs.holders(patch, p["pids"])
        if p["file"]:
            holders = [pid for pid in holders if maps_file(pid, p["file"])]
        if module.check_mode:
            for pid in holders:
                processes.append({"pid": pid, "result": "would undo"})
        elif p["pids"]:
            if holders:
                args = ["undo", patch] + targets + hs.state_dir + ["--json"]
                for pid in holders:
                    args += ["--pid", str(pid)]
                _, report = hs.run(args, ok_codes=(0, 1, 2, 3))
                if report.get("ok") is False and not report.get("failed"):
                    hs.fail("hotsplice undo: %s" % report.get("error", "failed"), report=report)
                record(report, "undone")
        else:
            # Every process that has the patch (of those mapping file): hotsplice finds them by
            # record and by the patch memory itself, so this may undo more than `holders`.
            _, report = hs.run(
                ["undo", patch] + targets + hs.state_dir + ["--json"], ok_codes=(0, 1, 2, 3)
            )
            if report.get("ok") is False and not report.get("failed"):
                hs.fail("hotsplice undo: %s" % report.get("error", "failed"), report=report)
            record(report, "undone")
        for e in processes:
            before[e["pid"]] = "patched"
            after[e["pid"]] = "unpatched" + (" (predicted)" if module.check_mode else "")
        for f in failed:
            before[f["pid"]] = after[f["pid"]] = "patched (undo failed: %s)" % f.get("error")
        changed = changed or bool(processes)

    result = dict(
        changed=changed,
        patch=patch,
        state=p["state"],
        processes=processes,
        skipped_processes=skipped,
        failed_processes=failed,
        reports=hs.reports,
        commands=hs.commands,
    )
    if p["install"]:
        result["installed"] = installed_after
    if module._diff:
        result["diff"] = dict(
            before_header="%s before" % patch,
            after_header="%s after" % patch,
            before=diff_text(before, installed_before),
            after=diff_text(after, installed_after),
        )
    if failed:
        module.fail_json(
            msg="hotsplice failed in %d process(es): %s"
            % (len(failed), "; ".join("pid %s: %s" % (f.get("pid"), f.get("error")) for f in failed)),
            **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
