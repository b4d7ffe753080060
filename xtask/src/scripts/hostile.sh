# Hostile cells (issue 13): hostile-demo attacks the partition, one case per cell start,
# while ticker-demo ticks in a second cell on its own CPU. Each case must end with the
# attacker stopped (state failed and a report naming it on the hypervisor's console) or with
# the access refused harmlessly (the attacker checks and says so, and runs on), the ticker
# still counting, nothing printed by the hypervisor's counter dump, and the cell destroyed.
# At the end the hypervisor's free memory and the root cell's CPUs are as before.
# One line per case: `hostile NAME ok`, `hostile NAME skipped (...)` or
# `hostile NAME FAILED: why`; then `hostile cases=N ran=R skipped=S failed=F`.
# The attacker runs in the demo cell, whose configuration has the root-shared page.
HOSTILE_CONFIG=${HOSTILE_CONFIG:-$CELL_CONFIG}
TICKER_CONFIG=${TICKER_CONFIG:-/etc/cellvisor/ticker.toml}
# The root-shared pages (physical addresses, see the two configurations): the case number
# and results of hostile-demo, the tick count of ticker-demo.
HOSTILE_PAGE=$((0x7ffff000))
TICKER_PAGE=$((0x7efff000))
TICKER_MAGIC=$((0x7469636b))

# The attacks, in hostile-demo's order (its CASES table), each with what must come of it:
#   stop     the hypervisor stops the cell (failed, reported on its console);
#   refused  the inmate sees the access refused and runs on (its heartbeat grows);
#   either   stop or refused (an access the CPU itself may refuse before the hypervisor);
#   storm    the cell storms for 3 s; the ticker and the root cell carry on;
#   off      the cell's PSCI SYSTEM_OFF ends the cell only (shut down);
#   reset    the cell's PSCI SYSTEM_RESET restarts the cell only, which resets again and
#            again (a reset storm): it runs on, the ticker and the root cell too;
#   deaf     the cell never answers: shutdown stops it when the timeout expires;
#   cpu-off  PSCI CPU_OFF of its only CPU: never returns (or DENIED), the cell is not failed.
# inherit-state reads what the vCPU before it on the CPU (the root cell's) left: nothing;
# stuck-in-handler is destroyed with its interrupt active, and inherit-priority, two cells
# later on the same CPU, must find no active priority left.
case_of() {
    case $1 in
        1) echo mem-root-ram-write stop ;;
        2) echo mem-root-ram-read stop ;;
        3) echo mem-hypervisor-write stop ;;
        4) echo mem-ticker-ram-read stop ;;
        5) echo uart0-write stop ;;
        6) echo gich-write stop ;;
        7) echo jump-outside stop ;;
        8) echo gicd-ldp stop ;;
        9) echo dc-zva-outside either ;;
        10) echo gicd-isenabler-foreign stop ;;
        11) echo gicd-ispendr-foreign stop ;;
        12) echo gicd-isactiver-foreign stop ;;
        13) echo gicd-icfgr-foreign stop ;;
        14) echo gicd-itargetsr-foreign stop ;;
        15) echo gicd-irouter-foreign stop ;;
        16) echo gicd-reserved-offset stop ;;
        17) echo gicd-halfword stop ;;
        18) echo gicd-sgir-foreign stop ;;
        19) echo gicr-foreign-frame stop ;;
        20) echo gicr-reserved-ppi25 stop ;;
        21) echo gicr-reserved-ppi26 stop ;;
        22) echo gicr-reserved-sgi15 stop ;;
        23) echo icc-sgi1r-foreign stop ;;
        24) echo gicd-igroupr-own refused ;;
        25) echo gicr-igroupr0-ppi27 refused ;;
        26) echo gicd-igrpmodr refused ;;
        27) echo ipriorityr-clamp refused ;;
        28) echo gicd-ctlr-zero refused ;;
        29) echo psci-cpu-on-foreign refused ;;
        30) echo psci-affinity-info-foreign refused ;;
        31) echo smccc-counter-dump refused ;;
        32) echo smccc-firmware-ids refused ;;
        33) echo smccc-version refused ;;
        34) echo hvc-unknown-immediate refused ;;
        35) echo sysreg-impdef refused ;;
        36) echo sysreg-el2-hcr refused ;;
        37) echo sysreg-icc-sgi1r-read refused ;;
        38) echo storm-virtual-timer storm ;;
        39) echo storm-sgi-self storm ;;
        40) echo storm-spi-pending storm ;;
        41) echo psci-system-off off ;;
        42) echo psci-system-reset reset ;;
        43) echo never-answers deaf ;;
        44) echo psci-cpu-off cpu-off ;;
        45) echo inherit-state refused ;;
        46) echo stuck-in-handler storm ;;
        47) echo inherit-priority refused ;;
    esac
}
CASE_COUNT=47
# From the kernel command line, for runs by hand: `HOSTILE_CASES="38 39"` runs only those
# cases, `STORM_SECONDS=60` makes each storm last that long.
STORM_SECONDS=${STORM_SECONDS:-3}

# peek ADDRESS: the 32-bit word at a physical address, in decimal.
peek() {
    echo $(($(devmem $1 32)))
}

# state_of CELL: the cell's state from `cellvisor cell list`.
state_of() {
    cellvisor cell list --json | grep -A 3 "\"name\": \"$1\"" |
        sed -n 's/.*"state": "\(.*\)".*/\1/p'
}

memory_free() {
    cellvisor info --json | sed -n 's/.*"memory_free": *\([0-9]*\).*/\1/p'
}

# The counter dump's header and the failure reports naming the attacker, so far.
dumps() {
    cellvisor console | grep -c "trap counters"
}
reports() {
    cellvisor console | grep "cell \"$CELL\"" | grep -c "failed"
}

# hostile_case NUMBER NAME KIND: one attack; sets $verdict (ok, skipped or FAILED: why).
hostile_case() {
    number=$1
    name=$2
    kind=$3
    why=
    dumps_before=$(dumps)
    reports_before=$(reports)
    if ! cellvisor cell create "$HOSTILE_CONFIG" >/dev/null ||
        ! cellvisor cell load "$CELL" "$INMATES/hostile-demo.bin" --config "$HOSTILE_CONFIG" \
            >/dev/null; then
        verdict="FAILED: create or load"
        cellvisor cell destroy "$CELL" >/dev/null 2>&1
        return
    fi
    devmem $HOSTILE_PAGE 32 $number
    for offset in 4 8 12 16 20 24; do
        devmem $((HOSTILE_PAGE + offset)) 32 0
    done
    ticks_before=$(peek $((TICKER_PAGE + 4)))
    if ! cellvisor cell start "$CELL" >/dev/null; then
        verdict="FAILED: start"
        cellvisor cell destroy "$CELL" >/dev/null 2>&1
        return
    fi
    # Until the cell is stopped or the inmate reports (status 1: attacking; 2: refused;
    # 3: went through; 4: not applicable; 5: storming), at most 15 s.
    tries=0
    status=0
    state=running
    while [ $tries -lt 75 ]; do
        sleep 0.2
        tries=$((tries + 1))
        status=$(peek $((HOSTILE_PAGE + 4)))
        state=$(state_of "$CELL")
        [ "$state" != running ] && break
        [ $status -ge 2 ] && break
        [ $status -eq 1 ] && [ "$kind" = deaf -o "$kind" = cpu-off -o "$kind" = reset ] && break
    done
    values="a=$(devmem $((HOSTILE_PAGE + 8)) 32) b=$(devmem $((HOSTILE_PAGE + 12)) 32) esr=$(devmem $((HOSTILE_PAGE + 16)) 32)"
    if [ $status -eq 4 ]; then
        verdict="skipped (not for this GIC)"
        cellvisor cell destroy "$CELL" >/dev/null
        return
    fi
    judge=$kind
    [ "$kind" = either ] && judge=stop
    case $judge in
        stop)
            if [ "$state" = failed ]; then
                # The report may still be on its way into the console ring.
                waited=0
                reports_after=$(reports)
                while [ "$reports_after" -le "$reports_before" ] && [ $waited -lt 10 ]; do
                    sleep 0.2
                    waited=$((waited + 1))
                    reports_after=$(reports)
                done
                report=$(cellvisor console | grep "cell \"$CELL\"" | grep "failed" | tail -n 1)
                if [ "$reports_after" -le "$reports_before" ]; then
                    why="failed without a report naming the cell"
                    cellvisor console | tail -n 6 | sed 's/^/hostile ring: /'
                fi
                mark "hostile $name report: $report"
            elif [ "$kind" = either ] && [ $status -eq 2 ]; then
                mark "hostile $name refused by the CPU: $values"
            elif [ $status -eq 3 ]; then
                why="not stopped, the access went through or faulted ($values)"
            else
                why="not stopped (state=$state status=$status)"
            fi
            ;;
        refused)
            if [ "$state" = failed ]; then
                why="stopped instead of refused"
            elif [ $status -ne 2 ]; then
                why="not refused (status=$status $values)"
            else
                beat=$(peek $((HOSTILE_PAGE + 20)))
                sleep 0.3
                if [ "$(peek $((HOSTILE_PAGE + 20)))" -le "$beat" ]; then
                    why="refused, but the cell does not run on"
                fi
                mark "hostile $name refused: $values"
            fi
            ;;
        storm)
            if [ $status -ne 5 ] || [ "$state" != running ]; then
                why="no storm (state=$state status=$status $values)"
            else
                storm_ticks=$(peek $((TICKER_PAGE + 4)))
                storm_uptime=$(sed 's/[. ].*//' /proc/uptime)
                sleep $STORM_SECONDS
                storm_ticks=$(($(peek $((TICKER_PAGE + 4))) - storm_ticks))
                storm_seconds=$(($(sed 's/[. ].*//' /proc/uptime) - storm_uptime))
                mark "hostile $name: ticker +$storm_ticks in $STORM_SECONDS s, root uptime +$storm_seconds s"
                if [ $storm_ticks -lt $((10 * STORM_SECONDS)) ]; then
                    why="the ticker starved during the storm (+$storm_ticks ticks in $STORM_SECONDS s)"
                elif [ "$(state_of "$CELL")" != running ]; then
                    why="the storming cell was stopped"
                fi
            fi
            ;;
        off)
            [ "$state" = "shut down" ] || why="not shut down (state=$state status=$status)"
            ;;
        reset)
            resets=$(peek $((HOSTILE_PAGE + 24)))
            sleep 1
            resets=$(($(peek $((HOSTILE_PAGE + 24))) - resets))
            state=$(state_of "$CELL")
            mark "hostile $name: $resets restarts in 1 s, state $state"
            if [ "$state" != running ]; then
                why="not running after its resets (state=$state)"
            elif [ $resets -lt 3 ]; then
                why="the cell did not restart (+$resets resets in 1 s)"
            fi
            ;;
        deaf)
            if [ $status -ne 1 ]; then
                why="did not start its spin (state=$state status=$status)"
            elif ! cellvisor cell shutdown "$CELL" --timeout-ms 1000; then
                why="shutdown did not stop it"
            elif [ "$(state_of "$CELL")" != "shut down" ]; then
                why="not shut down after the timeout (state=$(state_of "$CELL"))"
            fi
            ;;
        cpu-off)
            sleep 1
            status=$(peek $((HOSTILE_PAGE + 4)))
            state=$(state_of "$CELL")
            if [ "$state" = failed ]; then
                why="failed"
            elif [ $status -eq 3 ] && [ "$(devmem $((HOSTILE_PAGE + 8)) 32)" != 0xFFFFFFFD ]; then
                why="CPU_OFF returned, not DENIED ($values)"
            elif [ $status -ne 1 ] && [ $status -ne 3 ]; then
                why="status=$status"
            fi
            ;;
    esac
    ticks_after=$(peek $((TICKER_PAGE + 4)))
    if [ -z "$why" ] && [ "$ticks_after" -le "$ticks_before" ]; then
        why="the ticker stopped (ticks $ticks_before -> $ticks_after)"
    fi
    dumps_after=$(dumps)
    if [ -z "$why" ] && [ "$dumps_after" -ne "$dumps_before" ]; then
        why="the hypervisor printed its counter table for the cell"
    fi
    if ! cellvisor cell destroy "$CELL" >/dev/null; then
        why="${why:+$why, }destroy failed"
    fi
    if [ -z "$why" ] && [ "$(state_of "$TICKER")" != running ]; then
        why="the ticker cell is $(state_of "$TICKER")"
    fi
    verdict=${why:+FAILED: $why}
    verdict=${verdict:-ok}
}

TICKER=ticker
mark "hostile cpus online=$(cat /sys/devices/system/cpu/online) before"
memory_before=$(memory_free)
step ticker-create cellvisor cell create "$TICKER_CONFIG"
step ticker-load cellvisor cell load "$TICKER" "$INMATES/ticker-demo.bin" --config "$TICKER_CONFIG"
step ticker-start cellvisor cell start "$TICKER"
tries=0
while [ "$(peek $TICKER_PAGE)" != $TICKER_MAGIC ] && [ $tries -lt 50 ]; do
    sleep 0.2
    tries=$((tries + 1))
done
mark "hostile ticker ticks=$(peek $((TICKER_PAGE + 4)))"

ran=0
skipped=0
failed=0
for number in ${HOSTILE_CASES:-$(seq 1 $CASE_COUNT)}; do
    set -- $(case_of $number)
    hostile_case $number $1 $2
    case $verdict in
        ok) ran=$((ran + 1)) ;;
        skipped*) skipped=$((skipped + 1)) ;;
        *) ran=$((ran + 1)) && failed=$((failed + 1)) ;;
    esac
    mark "hostile $1 $verdict"
done

mark "hostile ticker ticks=$(peek $((TICKER_PAGE + 4))) at the end"
step ticker-destroy cellvisor cell destroy "$TICKER"
memory_after=$(memory_free)
if [ -n "$memory_before" ] && [ "$memory_before" = "$memory_after" ]; then
    mark "hostile memory kept"
else
    mark "hostile memory leaked: memory_free before=$memory_before after=$memory_after"
fi
mark "hostile cpus online=$(cat /sys/devices/system/cpu/online) after"
mark "hostile cases=$CASE_COUNT ran=$ran skipped=$skipped failed=$failed"
