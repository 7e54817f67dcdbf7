"""fracture_qi.dashboards"""
