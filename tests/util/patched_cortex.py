# SPDX-License-Identifier: Apache-2.0
"""Runs the real Synapse Cortex server with one function patched, for the fault tests.

  python patched_cortex.py [synapse.servers.cortex arguments]

Selected by environment variables (none set: the plain server):

  SYNTEST_SLOW_SYNC=SECS     os.sync sleeps SECS first: freeze()'s flush is slow
  SYNTEST_RESUME_FAILS=N     Cell.resume raises SynErr on its first N calls
  SYNTEST_EVENTS=FILE        appends "freeze T", "resumed T" and "resume-failed T"
                             lines (time.time()) on each Cell.freeze call, successful
                             resume and failed one, so a test can tell how long the
                             service stayed frozen
  SYNTEST_CERTS_RELOAD=noop  the https:certs reload handler answers success but
                             loads nothing: the old certificate stays served
  SYNTEST_CERTS_RELOAD=absent  no https:certs reload handler, as in a version
                             that cannot reload its HTTPS certificates
  SYNTEST_DELAY_LISTEN=SECS  the first listen on the unix socket (DIR/sock) waits
                             SECS first: the cell holds its files and its cell.guid
                             lock but does not answer, as while it boots; appends
                             "listen-delayed T" and "listening T" to SYNTEST_EVENTS
                             (read once, from the environment)
  SYNTEST_HOLD_NEXUS=1       every change the cell's nexus applies (NexsRoot.eat)
                             waits while this is set: on a mirror, whose loop
                             applies its leader's changes there, the mirror falls
                             behind its leader until it is unset (use it with
                             SYNTEST_CONTROL)
  SYNTEST_CONTROL=FILE       the settings above but `absent` are read from FILE's
                             `NAME=VALUE` lines at each call instead, so one server
                             serves several cases of a test (a new text of FILE
                             starts RESUME_FAILS's count again); no FILE: none set

Everything else is the real server, from the running Python's synapse: the same
patches apply to Synapse 2.256.0 and 3.7.0 (Cell.freeze, Cell.resume,
Cell.addReloadableSystem, NexsRoot.eat and os.sync have the same shape on both).
"""
import asyncio
import os
import sys
import time

import synapse.cortex as s_cortex
import synapse.daemon as s_daemon
import synapse.exc as s_exc
import synapse.lib.cell as s_cell
import synapse.lib.nexus as s_nexus

# The control file's text last read, and how many resume calls are still to fail
# (None: not counted yet, for this text or the environment).
_control = {'text': None, 'fails': None}


def setting(name):
    """SYNTEST_<name>: from the control file when there is one, else the environment."""
    path = os.environ.get('SYNTEST_CONTROL')
    if not path:
        return os.environ.get(f'SYNTEST_{name}', '')
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ''
    if text != _control['text']:
        _control['text'] = text
        _control['fails'] = None
    for line in text.splitlines():
        key, _, valu = line.partition('=')
        if key == f'SYNTEST_{name}':
            return valu
    return ''


def resume_fails_left():
    """How many more resume calls fail; counts one down when it is not zero."""
    valu = setting('RESUME_FAILS')
    if _control['fails'] is None:
        _control['fails'] = int(valu or '0')
    left = _control['fails']
    if left > 0:
        _control['fails'] = left - 1
    return left


def event(kind):
    path = setting('EVENTS')
    if path:
        with open(path, 'a') as f:
            f.write(f'{kind} {time.time():.3f}\n')


def patch():
    real_sync = os.sync

    def slow_sync():
        deadline = time.monotonic() + float(setting('SLOW_SYNC') or '0')
        # In slices: a control text without it ends the wait (its case is over).
        while time.monotonic() < deadline and float(setting('SLOW_SYNC') or '0') > 0:
            time.sleep(0.1)
        real_sync()

    os.sync = slow_sync

    real_freeze = s_cell.Cell.freeze
    real_resume = s_cell.Cell.resume

    async def freeze(self, timeout=30):
        event('freeze')
        return await real_freeze(self, timeout=timeout)

    async def resume(self):
        if resume_fails_left() > 0:
            event('resume-failed')
            raise s_exc.SynErr(mesg='injected resume failure (SYNTEST_RESUME_FAILS)')
        retn = await real_resume(self)
        event('resumed')
        return retn

    s_cell.Cell.freeze = freeze
    s_cell.Cell.resume = resume

    real_eat = s_nexus.NexsRoot.eat

    async def eat(self, *args, **kwargs):
        # In slices: a control text without it lets the change through.
        while setting('HOLD_NEXUS'):
            await asyncio.sleep(0.05)
        return await real_eat(self, *args, **kwargs)

    s_nexus.NexsRoot.eat = eat

    absent = os.environ.get('SYNTEST_CERTS_RELOAD') == 'absent'
    real_add = s_cell.Cell.addReloadableSystem

    def add_reloadable(self, name, func):
        if name != 'https:certs':
            return real_add(self, name, func)
        if absent:
            return None

        def reload_certs():
            if setting('CERTS_RELOAD') == 'noop':
                return True
            return func()

        return real_add(self, name, reload_certs)

    s_cell.Cell.addReloadableSystem = add_reloadable

    delay = [float(os.environ.get('SYNTEST_DELAY_LISTEN') or '0')]
    if delay[0] > 0:
        real_listen = s_daemon.Daemon.listen

        async def listen(self, url, **opts):
            if url.startswith('unix://') and delay[0] > 0:
                secs, delay[0] = delay[0], 0
                event('listen-delayed')
                await asyncio.sleep(secs)
                event('listening')
            return await real_listen(self, url, **opts)

        s_daemon.Daemon.listen = listen


if __name__ == '__main__':
    patch()
    asyncio.run(s_cortex.Cortex.execmain(sys.argv[1:]))
