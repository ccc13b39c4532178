"""Uploads over SFTP: a bound on the data in flight, writes that fill whole SSH packets."""

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

UPLOAD_IN_FLIGHT_BYTES = 512 * 1024  # sent before waiting for the answers (see _upload)
UPLOAD_PACKETS_PER_WRITE = 4  # SSH packets in one SFTP write, where the server takes that
SFTP_MIN_WRITE = 32768  # every SFTP server takes writes this big (draft-ietf-secsh-filexfer)


def _upload(sftp, local_path, remote_path, max_write=SFTP_MIN_WRITE):
    """paramiko's `put` (same result, same size check), with a bound on the data in flight
    and writes that fill whole SSH packets.

    `put` sends as fast as sshd's channel window allows (2 MiB): sshd then holds up to 2 MiB
    that sftp-server has not taken yet, and grows that buffer by remapping and copying it
    again and again. The first 5 MiB upload on a connection took 0.15 s of mostly sshd CPU
    instead of 0.03 s, and with 50 nodes on one machine that CPU is everybody's wall time.
    Waiting for the answers every UPLOAD_IN_FLIGHT_BYTES keeps the buffer small.
    """
    size = 0
    with open(local_path, "rb") as source, sftp.open(remote_path, "wb") as target:
        chunk_size = _write_size(sftp, target, max_write)
        target.MAX_REQUEST_SIZE = chunk_size  # where paramiko splits a write into requests
        in_flight = max(1, UPLOAD_IN_FLIGHT_BYTES // chunk_size)
        for count, chunk in enumerate(iter(lambda: source.read(chunk_size), b""), start=1):
            # Not pipelined, a write waits for its answer and for those of all before it.
            target.set_pipelined(count % in_flight != 0)
            target.write(chunk)
            size += len(chunk)
    written = sftp.stat(remote_path).st_size
    if written != size:
        raise OSError(f"size mismatch in put! {written} != {size}")


def _write_size(sftp, target, max_write):
    """The data of one SFTP write: whole SSH packets, as many as the server takes in one
    write (up to UPLOAD_PACKETS_PER_WRITE). paramiko puts at most `max packet - 64` bytes
    in a packet, and a write request adds 25 bytes and the handle to its data: a plain
    32 KiB write took two packets, and every write costs an answer to read."""
    per_packet = sftp.get_channel().out_max_packet_size - 64
    header = 25 + len(target.handle)
    packets = min(UPLOAD_PACKETS_PER_WRITE, (max_write + header) // per_packet)
    return packets * per_packet - header if packets >= 1 else max_write


def _max_write(sftp):
    """The largest write the SFTP server takes, from its limits@openssh.com answer (OpenSSH
    8.6 and later: 255 KiB), else the 32 KiB every server takes."""
    try:
        kind, answer = sftp._request(CMD_EXTENDED, "limits@openssh.com")
        if kind != CMD_EXTENDED_REPLY:
            return SFTP_MIN_WRITE
        answer.get_int64()  # max packet length
        answer.get_int64()  # max read length
        most = answer.get_int64()
    except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError, AttributeError):
        return SFTP_MIN_WRITE  # not supported (or a paramiko without `_request`)
    return most or 1 << 20  # 0: no limit
