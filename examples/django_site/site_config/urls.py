from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.index, name="index"),
    path("export/", views.request_export, name="export"),
    path("total/", views.order_total_view, name="total"),
    path("jobs/<str:job_id>/", views.job_status, name="job"),
    path("tasks/<str:result_id>/", views.task_status, name="task"),
]
