from django.urls import include, path

from vqtestapp import views

urlpatterns = [
    path("report/", views.create_report),
    path("areport/", views.acreate_report),
    path("add/", views.django_add),
    path("vaultq/", include("vaultq.django.dashboard")),
]
