"""The admin's pages, one module each; :mod:`..admin` puts their routes on one router."""
