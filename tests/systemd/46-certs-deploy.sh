#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `synbackup certs deploy` on an instance as installed by the .deb, in a booted
# systemd with the test Cortex unit: the packaged certbot hook deploys an easycert
# pair by a reload (the same MainPID, the journal event, the key 0600, the old pair
# kept); a Cortex that cannot reload (the patched launcher without the https:certs
# handler) has its unit restarted instead, and its new HTTPS port is found.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=synbackup.sh
. "$NS_DIR/synbackup.sh"

ns_boot t46
sb_install
sb_cortex cortex00
ns_defer ns_exec systemctl stop synapse-cortex@cortex00.service
sb_config cortex00 </dev/null

# certs deploy: the installed example hook, its map edited for this instance.
cortex=synapse-cortex@cortex00.service
ec() { ns_exec /opt/synapse-venv/bin/python -m synapse.tools.utils.easycert --certdir /root/certs "$@" >/dev/null; }
ec --ca testca
ec --server --server-sans DNS:localhost --signas testca localhost
ec --server --server-sans DNS:localhost --signas testca renewed.local
echo SYNBACKUP_CERT_DIR=/root/certs | ns_exec tee -a /etc/synbackup/cortex00.conf >/dev/null
ns_exec mkdir -p /etc/letsencrypt/live/localhost /etc/letsencrypt/renewal-hooks/deploy
ns_exec cp /root/certs/hosts/localhost.crt /etc/letsencrypt/live/localhost/fullchain.pem
ns_exec cp /root/certs/hosts/localhost.key /etc/letsencrypt/live/localhost/privkey.pem
ns_exec sh -c "sed 's/^cortex.example.com  cortex00\$/localhost cortex00/' /usr/share/doc/synbackup/examples/certbot-deploy-hook \
  >/etc/letsencrypt/renewal-hooks/deploy/synbackup && chmod 755 /etc/letsencrypt/renewal-hooks/deploy/synbackup"
pid=$(sb_prop $cortex MainPID)
ns_exec env RENEWED_LINEAGE=/etc/letsencrypt/live/localhost /etc/letsencrypt/renewal-hooks/deploy/synbackup
ns_assert_eq "$pid" "$(sb_prop $cortex MainPID)" "the Cortex's MainPID after a reload"
ns_exec cmp /root/certs/hosts/localhost.crt /srv/cortex/cortex00/sslcert.pem
ns_exec test -f /srv/cortex/cortex00/sslcert.pem.old
ns_assert_eq "600" "$(ns_exec stat -c %a /srv/cortex/cortex00/sslkey.pem)" "the deployed key's mode"
ns_has 'reloaded in' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e24 SYNBACKUP_INSTANCE=cortex00 -o cat \
  || ns_die "no deploy event"
# A Cortex that cannot reload: restarted by the deploy.
ns_copy_in "$NS_REPO/tests/util/patched_cortex.py" /usr/local/lib/patched_cortex.py
ns_exec mkdir -p /etc/systemd/system/$cortex.d
printf '%s\n' '[Service]' 'Environment=SYNTEST_CERTS_RELOAD=absent' 'ExecStart=' \
  'ExecStart=/opt/synapse-venv/bin/python /usr/local/lib/patched_cortex.py --telepath tcp://127.0.0.1:0 --https 0 /srv/cortex/%i' \
  | ns_exec tee /etc/systemd/system/$cortex.d/no-reload.conf >/dev/null
ns_exec systemctl daemon-reload
ns_exec systemctl restart $cortex
ns_exec storm.py wait /srv/cortex/cortex00 --timeout 120
pid=$(sb_prop $cortex MainPID)
ns_exec synbackup certs deploy cortex00 --cert /root/certs/hosts/renewed.local.crt --key /root/certs/hosts/renewed.local.key
[ "$pid" != "$(sb_prop $cortex MainPID)" ] || ns_die "the Cortex that cannot reload was not restarted"
ns_exec cmp /root/certs/hosts/renewed.local.crt /srv/cortex/cortex00/sslcert.pem
ns_has 'the unit restarted in' -- ns_exec journalctl -b MESSAGE_ID=6f1c2d4e8a9b4c3d9e0f1a2b3c4d5e24 -o cat \
  || ns_die "no restart event"
