"""The same deploy with Ansible (ansible-core): `ansible-playbook` with forks = N over
OpenSSH (ControlPersist, pipelining on), host keys pinned in a known_hosts file.

Tasks: make releases/<sha>/, `copy` the archive, `stat` its sha256 and `assert` it,
`unarchive` it on the node, remove it, then switch `current` atomically (`ln -sfn` to a
temporary name and `mv -T` over the link: `file: state=link` is not atomic).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from fanout_nodes import known_hosts_text

PLAYBOOK = """\
- hosts: nodes
  gather_facts: false
  vars:
    release: "{{ base }}/releases/{{ sha }}"
  tasks:
    - name: release folder
      ansible.builtin.file: {path: "{{ release }}", state: directory, mode: "0755"}
    - name: upload
      ansible.builtin.copy: {src: "{{ archive }}", dest: "{{ release }}.tar.gz.part", mode: "0644"}
    - name: checksum on the node
      ansible.builtin.stat: {path: "{{ release }}.tar.gz.part", checksum_algorithm: sha256}
      register: uploaded
    - name: verify
      ansible.builtin.assert:
        that: uploaded.stat.checksum == checksum
        quiet: true
    - name: unpack
      ansible.builtin.unarchive: {src: "{{ release }}.tar.gz.part", dest: "{{ release }}",
                                  remote_src: true}
    - name: remove the archive
      ansible.builtin.file: {path: "{{ release }}.tar.gz.part", state: absent}
    - name: switch current
      ansible.builtin.command:
        argv: [sh, -c, 'ln -sfn "releases/$1" current.tmp && mv -Tf current.tmp current', sh,
               "{{ sha }}"]
        chdir: "{{ base }}"
"""


def _ansible_playbook():
    found = Path(sys.executable).with_name("ansible-playbook")
    if not found.exists():
        raise SystemExit("ansible-playbook is not installed in this venv: "
                         f"{sys.executable} -m pip install ansible-core  (or pass --skip-ansible)")
    return found


def version():
    try:
        from importlib.metadata import version as dist_version

        return dist_version("ansible-core")
    except Exception:  # noqa: BLE001 - only printed
        return "not installed"


def _write_inputs(folder, targets, bases, key_path, sha, checksum, archive):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "known_hosts").write_text(known_hosts_text(targets))
    ssh_args = (f"-o UserKnownHostsFile={folder / 'known_hosts'} -o GlobalKnownHostsFile=/dev/null "
                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
    hosts = {f"node{t.index:02d}": {"ansible_host": t.host, "ansible_port": t.port, "base": str(b)}
             for t, b in zip(targets, bases, strict=True)}
    common = {"ansible_user": "root", "ansible_ssh_private_key_file": str(key_path),
              "ansible_python_interpreter": "/usr/bin/python3", "ansible_ssh_common_args": ssh_args,
              "sha": sha, "checksum": checksum, "archive": str(archive)}
    inventory = {"nodes": {"hosts": hosts, "vars": common}}
    (folder / "inventory.json").write_text(json.dumps(inventory, indent=1))
    (folder / "deploy.yml").write_text(PLAYBOOK)
    (folder / "ansible.cfg").write_text("")


def _environment(folder, forks):
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update({
        "ANSIBLE_CONFIG": str(folder / "ansible.cfg"),
        "ANSIBLE_HOME": str(folder / "home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(folder / "cp"),
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
    })
    return env


def run(targets, bases, archive, sha, checksum, key_path, folder):
    """Run the playbook on every target; raises with Ansible's output if it fails. The
    caller ends the ssh masters afterwards (`close_masters`), outside the timing."""
    folder = Path(folder)
    _write_inputs(folder, targets, bases, key_path, sha, checksum, archive)
    command = [str(_ansible_playbook()), "-i", str(folder / "inventory.json"),
               "-f", str(len(targets)), str(folder / "deploy.yml")]
    proc = subprocess.run(command, env=_environment(folder, len(targets)), capture_output=True,
                          text=True, timeout=900)
    (folder / "ansible.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-playbook exited {proc.returncode}; see {folder}/ansible.log:\n"
                           + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:]))


def close_masters(folder):
    """End the ControlPersist ssh masters the run left (they outlive ansible-playbook)."""
    for sock in (Path(folder) / "cp").glob("*"):
        subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "bench-node"],
                       capture_output=True, timeout=10)
