#!/opt/synapse-venv/bin/python
# SPDX-License-Identifier: Apache-2.0
"""Talks to a Cortex from inside the test container, for tests/systemd/*.sh.

Runs with the container's /opt/synapse-venv python, so it uses Synapse's own telepath
client: what it sees is what a Synapse user would see, independent of synbackup's own
telepath code under test. SERVICE is a service directory (its unix socket,
cell://DIR, needs root or the service's user) or a telepath URL.

  storm.py wait SERVICE [--timeout S]        until the service answers a call
  storm.py add SERVICE N [--start K] [--tag T]  adds IPv4 nodes K..K+N-1, tagged
  storm.py count SERVICE QUERY               prints how many nodes QUERY yields
  storm.py storm SERVICE TEXT [--timeout S]  runs Storm, prints its print/warn/err
                                             messages; exit 1 on an error message or
                                             when it takes longer than S seconds
  storm.py paused SERVICE                    prints getCellInfo()['cell']['paused']
  storm.py info SERVICE                      prints, as JSON, the cell's iden, run,
                                             paused, active, nexus index and
                                             upstream (2.x mirror / 3.x parent)
  storm.py health SERVICE                    prints getHealthCheck()['status']
  storm.py cull SERVICE OFFS                 rotates the nexus log, then culls its
                                             entries up to OFFS (Synapse's
                                             rotateNexsLog, cullNexsLog); prints
                                             whether it culled
  storm.py writer SERVICE --start K          adds nodes K, K+1, ... one edit at a time
                                             until killed; prints K once connected and
                                             every 50th value committed

An IPv4 node is `inet:ipv4` on Synapse 2.x and `inet:ip` on 3.x: `add` and `writer`
pick the form from the version the service reports (getCellInfo).

Also used on the host by the Rust tests (tests/util/line.rs), with the Python of
either release line (3.x: /opt/syn3/bin/python in tests/systemd/47-synapse3.sh), and
by tests/fixtures/make-fixture.sh.
"""
import argparse
import asyncio
import json
import sys
import time

import synapse.telepath as s_telepath


def url_of(service):
    return service if '://' in service else 'cell://' + service


async def wait(args):
    # Readiness is the service answering a real call: the socket file appears before
    # the service accepts on it, and a process that runs may still be starting.
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            async with await s_telepath.openurl(url_of(args.service)) as proxy:
                info = await proxy.getCellInfo()
                print(f"ready: {info['cell']['type']} {info['cell']['version']}")
                return 0
        except Exception as e:  # any failure means "not yet"; the last one is shown
            last = e
        await asyncio.sleep(0.5)
    print(f'not ready after {args.timeout}s: {last!r}', file=sys.stderr)
    return 1


async def run_storm(proxy, text, opts=None):
    """Runs Storm; prints print/warn/err messages; returns (nodes yielded, errors)."""
    nodes = errors = 0
    async for mesg in proxy.storm(text, opts=opts):
        kind, info = mesg
        if kind == 'node':
            nodes += 1
        elif kind in ('print', 'warn'):
            print(f"{kind}: {info.get('mesg')}", file=sys.stderr)
        elif kind == 'err':
            errors += 1
            print(f'err: {info}', file=sys.stderr)
    return nodes, errors


async def ipv4(core):
    """(form, Storm value of the integer $k) of an IPv4 node on this service: 2.x's
    inet:ipv4 takes the integer; 3.x's inet:ip a (version, integer) pair."""
    version = (await core.getCellInfo())['synapse']['version']
    major = int(version.split('.')[0]) if isinstance(version, str) else version[0]
    if major >= 3:
        return 'inet:ip', '((4), $k)'
    return 'inet:ipv4', '$k'


async def add(args):
    async with await s_telepath.openurl(url_of(args.service)) as core:
        form, valu = await ipv4(core)
        # Storm's $lib.range is (stop, start=None), unlike Python's: name the start.
        text = f'for $k in $lib.range($end, start=$start) {{ [ {form}={valu} +#$tag ] }}'
        opts = {'vars': {'start': args.start, 'end': args.start + args.n, 'tag': args.tag}}
        _, errors = await run_storm(core, text, opts)
        if errors:
            return 1
        # Report what is there, not what was sent: the caller asserts on it.
        print(await core.count(f'{form}#{args.tag}'))
    return 0


async def count(args):
    async with await s_telepath.openurl(url_of(args.service)) as core:
        print(await core.count(args.query))
    return 0


async def storm(args):
    async with await s_telepath.openurl(url_of(args.service)) as core:
        try:
            nodes, errors = await asyncio.wait_for(run_storm(core, args.text), timeout=args.timeout)
        except asyncio.TimeoutError:
            print(f'no answer within {args.timeout}s', file=sys.stderr)
            return 1
        print(nodes)
    return 1 if errors else 0


async def paused(args):
    async with await s_telepath.openurl(url_of(args.service)) as cell:
        info = await cell.getCellInfo()
        print(info['cell']['paused'])
    return 0


async def info(args):
    async with await s_telepath.openurl(url_of(args.service)) as cell:
        c = (await cell.getCellInfo())['cell']
        print(json.dumps({
            'iden': c['iden'],
            'run': c['run'],
            'paused': c['paused'],
            'active': c['active'],
            'nexus_index': c['nexus']['indx'],
            'upstream': c.get('mirror') or c.get('parent'),
        }))
    return 0


async def health(args):
    async with await s_telepath.openurl(url_of(args.service)) as cell:
        print((await cell.getHealthCheck())['status'])
    return 0


async def cull(args):
    async with await s_telepath.openurl(url_of(args.service)) as cell:
        await cell.rotateNexsLog()
        print(await cell.cullNexsLog(args.offs))
    return 0


async def writer(args):
    async with await s_telepath.openurl(url_of(args.service)) as core:
        form, valu = await ipv4(core)
        k = args.start
        print(k, flush=True)
        while True:
            opts = {'vars': {'k': k}}
            _, errors = await run_storm(core, f'[ {form}={valu} +#synbackup.writer ]', opts)
            if errors:
                return 1
            k += 1
            if k % 50 == 0:
                print(k, flush=True)


def main(argv):
    pars = argparse.ArgumentParser(prog='storm.py', description=__doc__.splitlines()[0])
    subs = pars.add_subparsers(dest='cmd', required=True)
    p = subs.add_parser('wait', help='wait until the service answers')
    p.add_argument('service')
    p.add_argument('--timeout', type=float, default=120)
    p.set_defaults(func=wait)
    p = subs.add_parser('add', help='add N IPv4 nodes; prints the tagged count')
    p.add_argument('service')
    p.add_argument('n', type=int)
    p.add_argument('--start', type=int, default=0)
    p.add_argument('--tag', default='synbackup.test')
    p.set_defaults(func=add)
    p = subs.add_parser('count', help='print how many nodes a Storm query yields')
    p.add_argument('service')
    p.add_argument('query')
    p.set_defaults(func=count)
    p = subs.add_parser('storm', help='run Storm; prints the number of nodes yielded')
    p.add_argument('service')
    p.add_argument('text')
    p.add_argument('--timeout', type=float, default=600)
    p.set_defaults(func=storm)
    p = subs.add_parser('paused', help="print whether the cell is frozen")
    p.add_argument('service')
    p.set_defaults(func=paused)
    p = subs.add_parser('info', help="print the cell's iden, run, freeze, role and nexus index")
    p.add_argument('service')
    p.set_defaults(func=info)
    p = subs.add_parser('health', help="print the cell's health status")
    p.add_argument('service')
    p.set_defaults(func=health)
    p = subs.add_parser('cull', help="rotate the nexus log and cull it up to OFFS")
    p.add_argument('service')
    p.add_argument('offs', type=int)
    p.set_defaults(func=cull)
    p = subs.add_parser('writer', help='add nodes one edit at a time until killed')
    p.add_argument('service')
    p.add_argument('--start', type=int, default=100000)
    p.set_defaults(func=writer)
    args = pars.parse_args(argv)
    return asyncio.run(args.func(args))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
