"""The presentation layer: every number-to-text conversion and sentence (:mod:`~camstat.present.text`), report
tables (:mod:`~camstat.present.tables`), Markdown/LaTeX (:mod:`~camstat.present.document`), terminal views
(:mod:`~camstat.present.terminal`), figures (:mod:`~camstat.present.figures`) and the report
(:mod:`~camstat.present.report`). Imported only by :mod:`camstat.cli` and :mod:`camstat.demo`; the analyses
never import it.
"""
