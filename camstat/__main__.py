from camstat.cli import run

run()
