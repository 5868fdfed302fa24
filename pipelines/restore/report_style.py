"""The report page's CSS (report.py), inline in the page: system fonts, no external resource."""

STYLE = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6576; --line: #dde2ea; --ok: #1f7a44; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f7fa; color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 12px; }
h3 { font-size: 16px; margin: 0 0 4px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px; margin: 18px 0; }
.where, .note { color: var(--muted); margin: 0; overflow-wrap: anywhere; }
.warning { background: #fff4d6; border: 2px solid #e0a800; border-radius: 8px; padding: 12px 16px;
           font-size: 16px; margin: 18px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin-bottom: 8px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: #fafbfc; }
.card b { display: block; font-size: 22px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 13px; }
.card.ok b { color: var(--ok); }
.card.bad b { color: var(--bad); }
svg { display: block; max-width: 100%; height: auto; font-size: 12px; fill: var(--muted); }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .line { fill: none; stroke: #2563c9; stroke-width: 2.5; }
svg .area { fill: #2563c9; fill-opacity: 0.12; stroke: none; }
.group { border-left: 4px solid var(--bad); padding: 4px 0 4px 14px; margin: 14px 0; }
.group .count { background: var(--bad); color: #fff; border-radius: 10px; padding: 0 8px; font-size: 13px; }
.group ul { margin: 6px 0 0; padding-left: 20px; overflow-wrap: anywhere; }
.advice { margin: 0; }
code { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
.videos { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: #fafbfc; }
figure img { display: block; width: 100%; height: 150px; object-fit: contain; background: #2a303a; }
figcaption { padding: 8px 10px; font-size: 13px; }
figcaption a { color: #2563c9; margin-left: 6px; }
figure.failed .reason { padding: 10px; height: 150px; overflow: hidden; color: var(--bad); font-size: 13px; overflow-wrap: anywhere; }
.badge { background: var(--bad); color: #fff; border-radius: 4px; padding: 0 6px; font-size: 12px; }
"""
