"""The VM page's graphs over time and the stats table's rates, in headless chromium, as a user reads them."""
import requests

from tests.browser.conftest import CONTROL
from tests.browser.test_console_ui import sideways
from tests.browser.test_vm_page import open_vm

AUTH = {"Authorization": "Bearer " + CONTROL}
GRAPHS = {"exits": "total", "tlb": "hit rate", "ept": "first touches", "l1d": "MSR-load list", "ipi": "sent"}


def type_help(server):
    requests.post(server + "/api/v1/vms/demo/console", json={"data": "help\r"}, headers=AUTH).raise_for_status()


def points(page):
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#graphs [data-graph]')].map(
        (g) => [g.dataset.graph, Number(g.dataset.points || 0)]))""")


def test_graphs_fill_and_agree_with_the_stats_rates(page, server):
    """The shell answers `help`: each quantity has its chart with a time axis and points, the exits/s readout is
    the stats table's rate of VM exits (one vCPU, the same tick), and the section fits 1280x800 and 800x600."""
    page.set_viewport_size({"width": 1280, "height": 800})
    open_vm(page, server)
    page.wait_for_function("() => document.querySelectorAll('#graphs [data-graph] .uplot').length === 5")
    assert points(page).keys() == GRAPHS.keys()
    exits_row = ("[...document.querySelectorAll('#stats tr')]"
                 ".find((r) => r.cells[0].textContent === 'total number of vm exits')")
    page.wait_for_function("() => (%s)?.cells[2].dataset.rate !== undefined && (%s).cells[2].dataset.rate !== ''"
                           % (exits_row, exits_row), timeout=30000)        # the page's second tick: rates from here
    type_help(server)
    # A tick with the shell's exits: the graph's newest exits/s is above zero.
    page.wait_for_function("""() => Number(document.querySelector('#graphs [data-graph=exits] [data-series=total]')
        .dataset.value) > 0""", timeout=30000)
    seen = page.evaluate("""() => {
        const g = document.querySelector('#graphs [data-graph=exits] [data-series=total]');
        const row = %s;
        return {graph: Number(g.dataset.value), graphText: g.textContent, rate: Number(row.cells[2].dataset.rate),
                rateText: row.cells[2].textContent, total: row.cells[1].textContent};
    }""" % exits_row)
    assert seen["graph"] == seen["rate"], seen
    assert seen["rateText"].endswith("/s") and seen["graphText"] == "total " + seen["rateText"], seen
    assert "0x" not in seen["total"] and "0x" not in seen["rateText"]                 # counts in decimal
    page.wait_for_function("() => [...document.querySelectorAll('#graphs [data-graph]')]"
                           ".every((g) => g.dataset.points >= 2)")
    for graph, series in GRAPHS.items():
        box = page.locator('#graphs [data-graph="%s"]' % graph)
        assert box.locator(".u-axis").count() >= 2 and box.locator("canvas").count() >= 1, graph   # time and value
        assert box.locator('[data-series="%s"]' % series).count() == 1, graph
    for width, height in ((1280, 800), (800, 600)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function("w => window.innerWidth === w && document.querySelector('#graphs .uplot').offsetWidth"
                               " <= document.getElementById('graphs').clientWidth", arg=width)
        assert sideways(page) == {"scroll": width, "inner": width, "wide": []}, width


def test_the_graphs_start_full_and_follow_the_theme(page, server):
    """A page opened later shows the server's history at once, not an empty chart; the charts' axes take the
    theme's colour when the switch changes it, or, on auto, when the browser's preference does."""
    open_vm(page, server)
    page.wait_for_function("() => Number(document.querySelector('#graphs [data-graph=exits]')?.dataset.points) >= 3")
    before = points(page)["exits"]
    page.reload()
    page.wait_for_selector("#graphs [data-graph=exits][data-points]")
    assert points(page)["exits"] >= before                  # the watch's answer carried the history
    strokes = {}
    themed = """() => Graphs.chart('exits').axes[1].stroke(Graphs.chart('exits'), 1) ===
        getComputedStyle(document.documentElement).getPropertyValue('--muted').trim()"""
    for theme in ("light", "dark"):
        page.select_option("#theme", theme)
        page.wait_for_function(themed)
        strokes[theme] = page.evaluate("Graphs.chart('exits').axes[1].stroke(Graphs.chart('exits'), 1)")
    assert strokes["light"] != strokes["dark"], strokes
    page.select_option("#theme", "")                        # auto: the browser's preference, as it changes
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_function(themed)
        assert page.evaluate("Graphs.chart('exits').axes[1].stroke(Graphs.chart('exits'), 1)") == strokes[scheme]


def test_ipis_and_first_touches_are_drawn_from_a_guest_that_makes_them(page, server):
    """The ipi guest on two vCPUs (ping-pong IPIs between them, its loop's pages in the TLB) and the memtouch guest
    (each page backed on its first touch): their graphs draw points above zero, as the model counted them. memtouch
    is done within a tick or two, before its page opens: the server's history holds its first touches."""
    made = []
    try:
        for name, guest, cpus, cmdline in (("pingpong", "ipi", 2, "count=30000"),
                                           ("touch", "memtouch", 1, "pages=20000 passes=3")):
            r = requests.post(server + "/api/v1/vms", headers=AUTH, json={
                "name": name, "guest": guest, "cpus": cpus, "mem_mb": 128, "cmdline": cmdline})
            assert r.status_code == 201, r.text
            made.append(name)
        for name, graph, series in (("pingpong", "ipi", 1), ("pingpong", "ipi", 2), ("pingpong", "tlb", 1),
                                    ("touch", "ept", 1)):
            page.goto("%s/vms/%s?token=%s" % (server, name, CONTROL))
            page.wait_for_function("([g, s]) => Graphs.chart(g) && Graphs.chart(g).data[s].some((v) => v > 0)",
                                   arg=[graph, series], timeout=60000)
    finally:
        for name in made:
            requests.delete(server + "/api/v1/vms/" + name, headers=AUTH)
