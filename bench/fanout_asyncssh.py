"""The same deploy with bare asyncssh: one event loop, one connection per node, all nodes
at once. Connect, `mkdir`, SFTP upload, then one command: verify the sha256, unpack into
releases/<sha>/, switch `current` atomically."""

import asyncio
import shlex

import asyncssh
from fanout_nodes import known_hosts_text, remote_finish


async def _deploy_one(target, base, archive, sha, checksum, key, known_hosts):
    release = f"{base}/releases/{sha}"
    async with asyncssh.connect(target.host, target.port, username="root", client_keys=[key],
                                known_hosts=known_hosts, agent_path=None, config=[],
                                preferred_auth="publickey") as conn:
        await conn.run(f"mkdir -p -- {shlex.quote(release)}", check=True)
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(archive), f"{release}.tar.gz.part")
        await conn.run(remote_finish(base, sha, checksum), check=True)


async def _deploy_all(jobs, archive, sha, checksum, key, known_hosts):
    await asyncio.gather(*(_deploy_one(target, base, archive, sha, checksum, key, known_hosts)
                           for target, base in jobs))


def run(targets, bases, archive, sha, checksum, key_path):
    """Deploy to every target (its folder from `bases`). Raises if any node fails."""
    key = asyncssh.read_private_key(str(key_path))
    known_hosts = asyncssh.import_known_hosts(known_hosts_text(targets))
    asyncio.run(_deploy_all(list(zip(targets, bases, strict=True)), archive, sha, checksum, key,
                            known_hosts))
