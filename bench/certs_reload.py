# SPDX-License-Identifier: Apache-2.0
"""What a Cortex's HTTPS listener does on `reload('https:certs')`, measured.

  VENV/bin/python bench/certs_reload.py [--reloads 20] [--clients 4] [--synbackup PATH]

Starts a real Cortex (the venv's synapse) with HTTPS on a free loopback port and an
easycert CA's certificate for localhost, keeps CLIENTS threads making HTTPS requests
(`GET /api/v1/active`, a new TLS connection each) and one thread on a single
kept-alive connection, and swaps between two pairs RELOADS times: the files renamed
into place, then `reload('https:certs')` over telepath (timed). With --synbackup, as
many more swaps are made by `synbackup certs deploy --dir` (timed end to end).

Prints: reload times (ms), requests made, failed, new connections that got the old
certificate after the reload returned, the kept-alive connection's certificate and
errors, and request latency (median, p99, max) overall.
"""
import argparse
import asyncio
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import hashlib

import synapse.telepath as s_telepath


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def easycert(certdir, *args):
    subprocess.run([sys.executable, '-m', 'synapse.tools.utils.easycert', '--certdir', certdir, *args],
                   check=True, stdout=subprocess.DEVNULL)


def fp_of_pem(path):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(path).read())).hexdigest()


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(sock):
    sock.sendall(b'GET /api/v1/active HTTP/1.1\r\nHost: localhost\r\n\r\n')
    buf = b''
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError('closed')
        buf += chunk
    head, body = buf.split(b'\r\n\r\n', 1)
    length = 0
    for line in head.split(b'\r\n'):
        if line.lower().startswith(b'content-length:'):
            length = int(line.split(b':')[1])
    while len(body) < length:
        body += sock.recv(4096)
    status = int(head.split(b' ')[1])
    if status != 200:
        raise ConnectionError(f'HTTP {status}')


class Loop(threading.Thread):
    def __init__(self, port, keep):
        super().__init__(daemon=True)
        self.port, self.keep = port, keep
        self.samples = []  # (start, end, fp or None, error)
        self.stop = False

    def connect(self):
        raw = socket.create_connection(('127.0.0.1', self.port), timeout=10)
        s = tls_ctx().wrap_socket(raw, server_hostname='localhost')
        return s, hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()

    def run(self):
        kept = None
        while not self.stop:
            t0 = time.monotonic()
            try:
                if self.keep:
                    if kept is None:
                        kept = self.connect()
                    s, fp = kept
                    request(s)
                else:
                    s, fp = self.connect()
                    with s:
                        request(s)
                self.samples.append((t0, time.monotonic(), fp, None))
            except Exception as e:  # a failed request is what we count
                self.samples.append((t0, time.monotonic(), None, repr(e)))
                kept = None


async def reload_once(dirn):
    async with await s_telepath.openurl('cell://' + dirn) as cell:
        t0 = time.monotonic()
        ret = await cell.reload(subsystem='https:certs')
        return (time.monotonic() - t0) * 1000, time.monotonic(), ret


def put_pair(src_dir, name, dirn):
    for src, dst in ((f'{name}.key', 'sslkey.pem'), (f'{name}.crt', 'sslcert.pem')):
        tmp = os.path.join(dirn, '.' + dst + '.tmp')
        shutil.copyfile(os.path.join(src_dir, src), tmp)
        os.chmod(tmp, 0o600)
        os.rename(tmp, os.path.join(dirn, dst))


def main():
    pars = argparse.ArgumentParser()
    pars.add_argument('--reloads', type=int, default=20)
    pars.add_argument('--clients', type=int, default=4)
    pars.add_argument('--synbackup')
    opts = pars.parse_args()

    tmp = tempfile.mkdtemp(prefix='certs-reload-')
    certdir = os.path.join(tmp, 'certs')
    easycert(certdir, '--ca', 'benchca')
    pairs = os.path.join(tmp, 'pairs')
    os.makedirs(pairs)
    fps = {}
    for name in ('a', 'b'):
        d = os.path.join(tmp, 'ec-' + name)
        shutil.copytree(certdir, d)
        easycert(d, '--server', '--server-sans', 'DNS:localhost', '--signas', 'benchca', 'localhost')
        shutil.copyfile(os.path.join(d, 'hosts/localhost.crt'), os.path.join(pairs, name + '.crt'))
        shutil.copyfile(os.path.join(d, 'hosts/localhost.key'), os.path.join(pairs, name + '.key'))
        fps[name] = fp_of_pem(os.path.join(pairs, name + '.crt'))
    dirn = os.path.join(tmp, 'cortex')
    os.makedirs(dirn)
    put_pair(pairs, 'a', dirn)
    port = free_port()
    with open(os.path.join(dirn, 'cell.yaml'), 'w') as f:
        f.write(f'https:port: {port}\n')
    log = open(os.path.join(tmp, 'cortex.log'), 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'synapse.servers.cortex', '--telepath', 'tcp://127.0.0.1:0', dirn],
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                asyncio.run(reload_once(dirn))
                socket.create_connection(('127.0.0.1', port), timeout=2).close()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit('the Cortex did not come up; log in ' + log.name)
                time.sleep(0.5)

        loops = [Loop(port, keep=False) for _ in range(opts.clients)] + [Loop(port, keep=True)]
        for lp in loops:
            lp.start()
        time.sleep(1)
        reloads, ends, current = [], [], 'a'
        for i in range(opts.reloads):
            current = 'b' if current == 'a' else 'a'
            start = time.monotonic()
            put_pair(pairs, current, dirn)
            ms, end, ret = asyncio.run(reload_once(dirn))
            assert ret['https:certs'][0], ret
            reloads.append(ms)
            ends.append((start, end, fps[current]))
            time.sleep(0.3)
        deploys = []
        if opts.synbackup:
            for i in range(opts.reloads):
                current = 'b' if current == 'a' else 'a'
                t0 = time.monotonic()
                start = t0
                subprocess.run([opts.synbackup, '-q', 'certs', 'deploy', '--dir', dirn, '--cert-dir', certdir,
                                '--cert', os.path.join(pairs, current + '.crt'),
                                '--key', os.path.join(pairs, current + '.key')], check=True,
                               stdout=subprocess.DEVNULL)
                deploys.append((time.monotonic() - t0) * 1000)
                ends.append((start, time.monotonic(), fps[current]))
                time.sleep(0.3)
        time.sleep(1)
        for lp in loops:
            lp.stop = True
        for lp in loops:
            lp.join()

        new_conn = [s for lp in loops[:-1] for s in lp.samples]
        kept = loops[-1].samples
        failed = [s for s in new_conn + kept if s[3]]
        # A request started after a reload returned and done before the next swap
        # began must have got that reload's certificate.
        stale, judged = [], 0
        for i, ((_, end, fp), nxt) in enumerate(zip(ends, [s for s, _, _ in ends[1:]] + [float('inf')])):
            inside = [s for s in new_conn if end < s[0] and s[1] < nxt and s[2]]
            judged += len(inside)
            stale += [(i, round((s[0] - end) * 1000)) for s in inside if s[2] != fp]
        if os.environ.get('BENCH_DEBUG'):
            print('stale (reload, started ms after it):', stale)
        stale = len(stale)
        lat = sorted((s[1] - s[0]) * 1000 for s in new_conn if not s[3])
        kept_fps = {s[2] for s in kept if s[2]}
        print(f'reload(https:certs): {len(reloads)} reloads, ms median {statistics.median(reloads):.1f}, '
              f'min {min(reloads):.1f}, max {max(reloads):.1f}')
        if deploys:
            print(f'synbackup certs deploy (check, keep, write, reload, confirm): {len(deploys)} deploys, '
                  f'ms median {statistics.median(deploys):.0f}, max {max(deploys):.0f}')
        print(f'requests: {len(new_conn)} on new connections, {len(kept)} on one kept-alive connection; '
              f'failed {len(failed)} {failed[:3]}')
        print(f'new connections started after a reload returned (and done before the next): {judged}, '
              f'of which got the previous certificate: {stale}')
        print(f'kept-alive connection: certificates seen {len(kept_fps)} (the one it was set up with), '
              f'errors {sum(1 for s in kept if s[3])}')
        print(f'latency of new-connection requests (ms): median {statistics.median(lat):.1f}, '
              f'p99 {lat[int(len(lat) * 0.99)]:.1f}, max {lat[-1]:.1f}')
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
