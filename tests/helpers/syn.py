# SPDX-License-Identifier: Apache-2.0
"""Talk to a real Synapse Cortex through its unix socket, for the test suites.

Usage (with the venv's python):
  syn.py wait DIR [TIMEOUT]       until cell://DIR answers Storm (exit 1 on timeout)
  syn.py add DIR N [START]        add N inet:ipv4 nodes (values START..START+N-1), tagged #t
  syn.py count DIR [FORM]         print the number of nodes of FORM (default inet:ipv4)
  syn.py writer DIR START         add nodes one by one, forever (the test kills it);
                                  prints the first value it committed, then one line per 50
  syn.py delete DIR N             delete N inet:ipv4 nodes (the lowest values)
  syn.py sample DIR N             print N nodes (form, value, props, tags) as JSON lines
  syn.py edit DIR                 add one node; exit 0 when the edit committed (timeout 20 s)
"""
import asyncio
import json
import sys
import time

import synapse.telepath as s_telepath


def url(d):
    return 'cell://' + d


async def storm(core, text, opts=None):
    msgs = []
    async for m in core.storm(text, opts=opts):
        if m[0] == 'err':
            raise RuntimeError(f'storm error: {m[1]}')
        msgs.append(m)
    return msgs


async def main(argv):
    cmd, d = argv[0], argv[1]
    if cmd == 'wait':
        timeout = float(argv[2]) if len(argv) > 2 else 90.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with await s_telepath.openurl(url(d)) as core:
                    await core.count('inet:ipv4')
                    return 0
            except Exception:
                await asyncio.sleep(0.25)
        print(f'{d} did not answer within {timeout} s', file=sys.stderr)
        return 1
    async with await s_telepath.openurl(url(d)) as core:
        if cmd == 'add':
            n = int(argv[2])
            start = int(argv[3]) if len(argv) > 3 else 0
            # Storm's signature is $lib.range(stop, start): values start..start+n-1.
            await storm(core, f'for $k in $lib.range({start + n}, {start}) {{ [inet:ipv4=$k +#t] }}')
        elif cmd == 'count':
            form = argv[2] if len(argv) > 2 else 'inet:ipv4'
            print(await core.count(form))
        elif cmd == 'writer':
            k = int(argv[2])
            print(k, flush=True)
            while True:
                await storm(core, f'[inet:ipv4={k} +#w]')
                k += 1
                if k % 50 == 0:
                    print(k, flush=True)
        elif cmd == 'delete':
            n = int(argv[2])
            await storm(core, f'inet:ipv4 | limit {n} | delnode')
        elif cmd == 'sample':
            n = int(argv[2])
            async for m in core.storm(f'inet:ipv4 | limit {n}'):
                if m[0] == 'node':
                    (form, valu), info = m[1]
                    print(json.dumps({'form': form, 'valu': valu, 'props': info.get('props'),
                                      'tags': sorted(info.get('tags', {}))}, sort_keys=True))
        elif cmd == 'edit':
            await asyncio.wait_for(storm(core, '[inet:ipv4=255.255.255.254]'), timeout=20)
        else:
            print(f'unknown command {cmd}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(asyncio.run(main(sys.argv[1:])))
