"""fracture_qi.dicom"""
