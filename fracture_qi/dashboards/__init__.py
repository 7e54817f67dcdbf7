"""The Voila QI dashboard: an aggregate cube (:mod:`.cube`), what is shown for a filter
(:mod:`.views`) and the widgets (:mod:`.app`, ``QIDashboard``)."""
